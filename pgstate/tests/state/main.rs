//! pgstate against a private PostgreSQL: each module is one part of the shared state, and each
//! test plays two or three instances as separate `State` values on one database.

mod util;

/// Service-wide rate leases, and quota usage.
mod limits;
/// Schema migrations applied at once by several instances.
mod migrations;
/// Service-wide session caps and the expiry of a crashed instance's sessions.
mod sessions;
/// The login-failure throttle as one count over instances.
mod throttle;
/// The upload registry and its fencing.
mod uploads;
/// Users, and a change told to another instance.
mod users;
