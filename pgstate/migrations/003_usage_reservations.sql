-- pgstate schema 3: the quota reserved by uploads in flight, one row per upload, held by the
-- instance whose heartbeat renews it (as sessions are). An instance killed mid-upload leaves
-- its reservations for their time to live only, never for good; a recount of a home (which
-- sets usage to a listing) leaves the reservations of uploads in flight alone. Additive only:
-- an instance still running schema 2's code keeps reserving in usage itself, and the check of
-- either counts both.
CREATE TABLE usage_reservations (
    id bigserial PRIMARY KEY,
    home text NOT NULL,
    bytes bigint NOT NULL CHECK (bytes >= 0),
    files bigint NOT NULL CHECK (files >= 0),
    instance text NOT NULL,
    expires timestamptz NOT NULL
);
CREATE INDEX usage_reservations_home ON usage_reservations (home);
