//! Ids shared between services. An account id is the accounts service's
//! (a UUID in text); a device id names one signed-in device session. Both
//! are cheap to clone, since signaling copies them into every event and
//! index.

use std::sync::Arc;

/// A user's account, as tokens name it (`sub`).
pub type AccountId = Arc<str>;
/// One signed-in device of an account, as tokens name it (`did`).
pub type DeviceId = Arc<str>;
