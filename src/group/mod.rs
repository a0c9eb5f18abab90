//! Group pacing: the workers of a consumer group pace one backend as one. The backend's
//! capacity is a fact about the backend, not about one worker, so every worker publishes
//! its state on a compacted control topic (`kafka.control_topic`) and reads everyone's:
//!
//! - one estimate of the backend's capacity per backend: any member's concurrency
//!   controller moves it (back-pressure seen by one lowers it for all) and the newest
//!   version wins ([`crate::backend::concurrency::Estimate`]);
//! - each member's share of it by demand (calls in flight plus messages buffered): a
//!   member with nothing to do gives its share back within a publish interval, and a busy
//!   one takes what was freed at once ([`crate::backend::concurrency::GroupShare`]);
//! - nothing on the request path waits on the topic: a call waits only for one of the
//!   controller's permits, which the pacer resizes beside the calls.
//!
//! If the control topic cannot be reached, a worker paces on its own controller from the
//! share it held, logs it once, and rejoins the group's view when the topic is back.
//!
//! - [`record`]: the state record (version 1, JSON).
//! - [`view`]: what one worker knows of its group (pure).
//! - [`pacer`]: the task that publishes, reads and steers the controller.
//! - [`control_topic`]: the Kafka producer and reader of the control topic.

pub mod control_topic;
pub mod pacer;
pub mod record;
pub mod view;

pub use pacer::{GroupStatus, Load, Pacer};

#[cfg(test)]
mod simulation;
