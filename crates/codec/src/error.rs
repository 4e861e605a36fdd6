//! Why a payload could not be decoded or an action could not be encoded.
//!
//! Every error names a stable snake_case [`reason`](DecodeError::reason), used as the value of
//! the dead-letter header and as a metric label, and says whether it is transient: a transient
//! error (the schema registry could not be asked) must be retried without advancing, while every
//! other decode error is poison — the message will never decode, so it is dead-lettered.

/// Why a touchpoint (or an action, in [`decode_action`](crate::decode_action)) could not be read.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The payload is not JSON, or not a JSON object of the expected shape.
    #[error("payload is not a valid JSON {what}: {why}")]
    BadJson {
        /// What was expected: `touchpoint` or `action`.
        what: &'static str,
        /// What is wrong, as the JSON parser says it (with line and column).
        why: String,
    },
    /// The payload is not a valid Avro datum of the expected framing and schema.
    #[error("payload is not a valid Avro {what}: {why}")]
    BadAvro {
        /// What was expected: `touchpoint` or `action`.
        what: &'static str,
        /// What is wrong: a bad magic byte, truncation, trailing bytes, an out-of-range value.
        why: String,
    },
    /// The writer schema named by the framing is not known, cannot be fetched, or cannot be read
    /// as our schema.
    #[error("unknown writer schema: {0}")]
    UnknownSchema(String),
    /// The touchpoint has no customer id (absent, null or empty).
    #[error("touchpoint `{event_id}` has no customer_id: every touchpoint must name its customer")]
    MissingCustomerId {
        /// The event id, when there is one, to find the message upstream.
        event_id: String,
    },
    /// The touchpoint fails another check: its `event_id` or `type` is empty.
    #[error("touchpoint is invalid: {0}")]
    InvalidEvent(String),
    /// The schema registry could not be reached or answered with a server error. Transient.
    #[error("schema registry at {url} is unavailable: {why}; retry later")]
    RegistryUnavailable {
        /// The URL that was requested.
        url: String,
        /// The network error or HTTP status.
        why: String,
    },
}

impl DecodeError {
    /// The stable snake_case reason, for dead-letter headers and metric labels.
    ///
    /// One of `bad_json`, `bad_avro`, `unknown_schema`, `missing_customer_id`, `invalid_event`,
    /// `registry_unavailable`. These strings never change meaning; new ones may be added.
    pub fn reason(&self) -> &'static str {
        match self {
            DecodeError::BadJson { .. } => "bad_json",
            DecodeError::BadAvro { .. } => "bad_avro",
            DecodeError::UnknownSchema(_) => "unknown_schema",
            DecodeError::MissingCustomerId { .. } => "missing_customer_id",
            DecodeError::InvalidEvent(_) => "invalid_event",
            DecodeError::RegistryUnavailable { .. } => "registry_unavailable",
        }
    }

    /// Tells whether retrying the same payload later may succeed: back off and retry without
    /// advancing, rather than dead-lettering. Only `registry_unavailable` is transient.
    pub fn is_transient(&self) -> bool {
        matches!(self, DecodeError::RegistryUnavailable { .. })
    }
}

/// Why an action (or a schema) could not be encoded or registered.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EncodeError {
    /// The schema registry could not be reached or answered with a server error. Transient.
    #[error("schema registry at {url} is unavailable: {why}; retry later")]
    RegistryUnavailable {
        /// The URL that was requested.
        url: String,
        /// The network error or HTTP status.
        why: String,
    },
    /// The schema registry refused to register the schema (for example `409`: incompatible with
    /// the subject's earlier versions). Needs an operator: retrying does not help.
    #[error("schema registry at {url} refused the schema: HTTP {status}: {body}")]
    RegistryRejected {
        /// The URL that was requested.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The registry's explanation.
        body: String,
    },
    /// A value does not fit the Avro schema (for example a journey version above `i32::MAX`).
    #[error("cannot encode {what} as Avro: {why}")]
    Unrepresentable {
        /// What was being encoded.
        what: &'static str,
        /// Which field and why.
        why: String,
    },
}

impl EncodeError {
    /// The stable snake_case reason, for logs and metric labels: `registry_unavailable`,
    /// `registry_rejected` or `unrepresentable`.
    pub fn reason(&self) -> &'static str {
        match self {
            EncodeError::RegistryUnavailable { .. } => "registry_unavailable",
            EncodeError::RegistryRejected { .. } => "registry_rejected",
            EncodeError::Unrepresentable { .. } => "unrepresentable",
        }
    }

    /// Tells whether retrying later may succeed. Only `registry_unavailable` is transient.
    pub fn is_transient(&self) -> bool {
        matches!(self, EncodeError::RegistryUnavailable { .. })
    }
}
