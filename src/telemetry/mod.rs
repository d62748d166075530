//! What tlspeek tells its operators: Prometheus metrics (with a cardinality guard), the
//! per-connection record and its JSON event line, and the event log writer.

pub mod event_line;
pub mod events;
pub mod guard;
pub mod labels;
pub mod log_fields;
pub mod metrics;
pub mod record;

pub use events::EventLog;
pub use labels::{SourceLabel, destination_label, source_label};
pub use metrics::{Metrics, Who};
pub use record::{ActionTaken, ConnectionRecord, Kind, Mode, Outcome};
