//! Group pacing: the workers of a consumer group pace one backend as one. The backend's
//! capacity is a fact about the backend, not about one worker, so every worker publishes
//! its state on a compacted control topic (`kafka.control_topic`) and reads everyone's:
//!
//! - one estimate of the backend's capacity per backend: any member's concurrency
//!   controller moves it (back-pressure seen by one lowers it for all) and the newest
//!   version wins ([`crate::backend::concurrency::Estimate`]);
//! - each member's share of it by demand (calls in flight plus messages buffered): a
//!   member with nothing to do gives its share back within a publish interval, and a busy
//!   one takes what was freed at once ([`share::GroupShare`]);
//! - nothing on the request path waits on the topic: a call waits only for one of the
//!   controller's permits, which the pacer resizes beside the calls.
//!
//! If the control topic cannot be reached, a worker paces on its own controller from the
//! share it held, logs it once, and rejoins the group's view when the topic is back.
//!
//! - [`record`]: the state record (version 1, JSON).
//! - [`view`]: what one worker knows of its group (pure), and the one rule for reading
//!   the group's estimate from the records.
//! - [`share`]: the division of the group's limit among its members by demand (pure).
//! - [`context`]: what pacing with a group means for the concurrency controller (how a
//!   refusal's level is reckoned, refusal holds, probe turns, the echo wait), as its
//!   [`crate::backend::concurrency::Peers`].
//! - [`pacer`]: the task that publishes, reads and steers the controller.
//! - [`control_topic`]: the Kafka producer and reader of the control topic.

pub mod context;
pub(crate) mod control_topic;
pub(crate) mod pacer;
pub mod record;
pub mod share;
pub mod view;

pub(crate) use pacer::{GroupStatus, Load, Pacer};

#[cfg(test)]
mod simulation;
