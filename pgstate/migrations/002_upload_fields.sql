-- pgstate schema 2: what the upload registry needs beyond schema 1 to be the whole of the
-- upload-state record (s3store's UploadRecord). Additive only: an instance still running
-- schema 1's code keeps working (its rows get NULLs, which mean "not known", as in the
-- bucket's records of older daemons).

-- The client's own name for the upload (with its user) and the size it declared: a resume
-- continues only the same client upload of the same file.
ALTER TABLE uploads ADD COLUMN client_id text;
ALTER TABLE uploads ADD COLUMN size bigint CHECK (size >= 0);

-- The running digests of the chunks that end within each part (JSON, opaque to the
-- database), so that a resumed upload still records every chunk's digest; NULL when a part
-- did not end on a chunk boundary.
ALTER TABLE upload_parts ADD COLUMN chunks text;

-- The sweeper looks for uploads not written to lately.
CREATE INDEX uploads_updated ON uploads (updated);
