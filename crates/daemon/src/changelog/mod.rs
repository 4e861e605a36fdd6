//! The changelog: every change of a customer's state is also produced to a compacted Kafka
//! topic, partition for partition with the input, so that a partition's customers can be
//! restored wherever the partition is assigned (the way Kafka Streams moves its state stores).
//!
//! - [`record`]: what the changelog holds (customers, and input positions);
//! - [`topic`]: the topic checked, or created, at start;
//! - [`restore`]: a partition's customers read back into the local store;
//! - [`produce`]: a batch's records produced after its actions, and the checkpoint;
//! - [`guards`]: the events a restored state holds already, skipped when read again;
//! - [`fence`]: what of a batch a replica may still write once a partition is no longer its own.

pub mod fence;
pub mod guards;
pub mod produce;
pub mod record;
pub mod restore;
pub mod topic;
