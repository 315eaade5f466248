-- PostgreSQL twin of ../0035_file_pages.sql.
-- The pages of a PDF uploaded through Stockyard (stockyard.pdfpages.PageCounter, counted as its bytes
-- pass: a Gemini Files API upload's chunks, an OpenAI or Anthropic file's form), which a budget holds
-- for a prompt that names the file (pdfpages.held_pdf_tokens); 1000 when a PDF's pages could not be
-- counted (Gemini's page limit); NULL for a file that is not a PDF and for rows kept before this version.
ALTER TABLE owned_objects ADD COLUMN pages INTEGER;
-- An upload in progress: what its chunks so far showed of its pages (PageCounter.dumps: a few numbers
-- and the last bytes read, up to an object stream open at a chunk's end), so the next chunk, on any
-- replica, goes on counting. NULL before its first chunk.
ALTER TABLE gemini_uploads ADD COLUMN pages_state TEXT;
