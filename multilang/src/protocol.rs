//! The MultiLangDaemon protocol (amazon-kinesis-client 3.x, `amazon-kinesis-client-multilang`)
//! as pure code: the messages, how a child's line is read, which checkpoints are allowed
//! when, and how client errors are named to the child.
//!
//! One JSON object per line. The runner sends an action (`initialize`,
//! `processRecords`, `leaseLost`, `shardEnded`, `shutdownRequested`); the child answers
//! each with `{"action":"status","responseFor":"<action>"}` and, before that, may send
//! `{"action":"checkpoint",...}`, answered with a checkpoint message carrying `error`.

use std::cmp::Ordering;

use serde::Serialize;
use serde_json::Value;

/// An action sent to the child; each one is answered by a `status` message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// `initialize`: the first message, with the shard and its checkpoint.
    Initialize,
    /// `processRecords`: a batch of records.
    ProcessRecords,
    /// `leaseLost`: the shard is gone; nothing may be checkpointed.
    LeaseLost,
    /// `shardEnded`: the shard is closed and every record was delivered.
    ShardEnded,
    /// `shutdownRequested`: the runner stops; checkpoint now.
    ShutdownRequested,
}

impl Action {
    /// The protocol's name of the action.
    pub fn name(self) -> &'static str {
        match self {
            Action::Initialize => "initialize",
            Action::ProcessRecords => "processRecords",
            Action::LeaseLost => "leaseLost",
            Action::ShardEnded => "shardEnded",
            Action::ShutdownRequested => "shutdownRequested",
        }
    }

    /// Whether the child may checkpoint while this action is unanswered.
    pub fn allows_checkpoint(self) -> bool {
        matches!(self, Action::ProcessRecords | Action::ShardEnded | Action::ShutdownRequested)
    }
}

/// One record as the protocol carries it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonRecord {
    /// Always `"record"`.
    pub action: &'static str,
    /// The payload, base64.
    pub data: String,
    /// The partition key.
    pub partition_key: String,
    /// The sequence number.
    pub sequence_number: String,
    /// The sub-sequence number (0 unless KPL-aggregated).
    pub sub_sequence_number: u64,
    /// Milliseconds since the epoch.
    pub approximate_arrival_timestamp: i64,
}

impl JsonRecord {
    /// A record of the Butler client in protocol form.
    pub fn from_record(r: &kinesis_butler_client::Record) -> Self {
        Self {
            action: "record",
            data: base64_simd::STANDARD.encode_to_string(&r.data),
            partition_key: r.partition_key.clone(),
            sequence_number: r.sequence_number.clone(),
            sub_sequence_number: r.sub_sequence_number,
            approximate_arrival_timestamp: r.approximate_arrival_timestamp_ms,
        }
    }
}

/// A message to the child.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum ToChild {
    /// `initialize`.
    #[serde(rename_all = "camelCase")]
    Initialize {
        /// The shard id.
        shard_id: String,
        /// The checkpoint processing starts after (null: none yet).
        sequence_number: Option<String>,
        /// Its sub-sequence number.
        sub_sequence_number: Option<u64>,
    },
    /// `processRecords`.
    #[serde(rename_all = "camelCase")]
    ProcessRecords {
        /// The records, in order.
        records: Vec<JsonRecord>,
        /// How far behind the tip the batch was read.
        millis_behind_latest: i64,
    },
    /// `leaseLost`.
    LeaseLost,
    /// `shardEnded`.
    ShardEnded,
    /// `shutdownRequested`.
    ShutdownRequested,
    /// The answer to a checkpoint request (both sequence keys always present).
    #[serde(rename_all = "camelCase")]
    Checkpoint {
        /// The sequence number the child asked for (null: the last record delivered).
        sequence_number: Option<String>,
        /// Its sub-sequence number.
        sub_sequence_number: Option<u64>,
        /// Null on success, else the KCL exception class name.
        error: Option<String>,
    },
}

impl ToChild {
    /// The message as one line of JSON (with its newline).
    pub fn to_line(&self) -> String {
        let mut line = serde_json::to_string(self).expect("protocol messages serialize");
        line.push('\n');
        line
    }
}

/// A line the child wrote on stdout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromChild {
    /// An empty line (kclpy writes one before and after each message).
    Blank,
    /// Not JSON, or JSON without a known action: logged and skipped.
    Noise(String),
    /// `status` for an action.
    Status {
        /// The action it answers (`responseFor`).
        response_for: String,
    },
    /// `checkpoint` request.
    Checkpoint {
        /// Null: the last record delivered (or `SHARD_END` at a shard's end).
        sequence_number: Option<String>,
        /// Null or absent: 0 (or the last record's, with a null sequence number).
        sub_sequence_number: Option<u64>,
    },
}

/// Reads one line of the child's stdout.
pub fn parse_line(line: &str) -> FromChild {
    let trimmed = line.trim();
    if trimmed.is_empty() {
        return FromChild::Blank;
    }
    let Ok(Value::Object(map)) = serde_json::from_str::<Value>(trimmed) else {
        return FromChild::Noise(trimmed.to_owned());
    };
    match map.get("action").and_then(Value::as_str) {
        Some("status") => match map.get("responseFor").and_then(Value::as_str) {
            Some(r) => FromChild::Status { response_for: r.to_owned() },
            None => FromChild::Noise(trimmed.to_owned()),
        },
        Some("checkpoint") => {
            let sequence_number = match map.get("sequenceNumber") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(Value::Number(n)) => Some(n.to_string()),
                _ => None,
            };
            let sub_sequence_number = match map.get("subSequenceNumber") {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => s.parse().ok(),
                _ => None,
            };
            FromChild::Checkpoint { sequence_number, sub_sequence_number }
        }
        _ => FromChild::Noise(trimmed.to_owned()),
    }
}

/// A record's place in its shard.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Position {
    /// Decimal sequence number.
    pub sequence: String,
    /// Sub-sequence number.
    pub sub_sequence: u64,
}

impl Position {
    /// The position of a record.
    pub fn of(r: &kinesis_butler_client::Record) -> Self {
        Self { sequence: r.sequence_number.clone(), sub_sequence: r.sub_sequence_number }
    }
}

impl Ord for Position {
    fn cmp(&self, other: &Self) -> Ordering {
        let (a, b) = (self.sequence.trim_start_matches('0'), other.sequence.trim_start_matches('0'));
        a.len().cmp(&b.len()).then_with(|| a.cmp(b)).then_with(|| self.sub_sequence.cmp(&other.sub_sequence))
    }
}

impl PartialOrd for Position {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Names of the KCL exceptions a checkpoint answer carries.
pub mod errors {
    /// The lease is gone (moved to another worker, or the shard was released).
    pub const SHUTDOWN: &str = "ShutdownException";
    /// Checkpointing is not possible now (wrong moment, or the lease store failed).
    pub const INVALID_STATE: &str = "InvalidStateException";
    /// A transient failure: retrying may help.
    pub const THROTTLING: &str = "ThrottlingException";
    /// A sequence number that is malformed or not among the records delivered.
    pub const ILLEGAL_ARGUMENT: &str = "IllegalArgumentException";
}

/// The KCL exception name for a failed client checkpoint call.
pub fn error_name(kind: kinesis_butler_client::ErrorKind) -> &'static str {
    use kinesis_butler_client::ErrorKind::*;
    match kind {
        LeaseLost | Stopped => errors::SHUTDOWN,
        Connection => errors::THROTTLING,
        InvalidArgument => errors::ILLEGAL_ARGUMENT,
        Handler | NotFound | Unauthenticated | Server => errors::INVALID_STATE,
        // Kinds added to the client later.
        #[allow(unreachable_patterns)]
        _ => errors::INVALID_STATE,
    }
}

/// What to do with a checkpoint request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckpointDecision {
    /// Store this position.
    Store(Position),
    /// Nothing to store, answer success (e.g. nothing delivered yet, or the shard's
    /// end, which the client stores itself once every batch was processed).
    Succeed,
    /// Answer with this KCL exception name.
    Refuse(&'static str),
}

/// Decides a checkpoint request made while `action` is unanswered. `last_delivered` is
/// the last record given to this child (over all batches of the lease).
pub fn decide_checkpoint(
    action: Option<Action>,
    sequence_number: Option<&str>,
    sub_sequence_number: Option<u64>,
    last_delivered: Option<&Position>,
) -> CheckpointDecision {
    let Some(action) = action.filter(|a| a.allows_checkpoint()) else {
        return CheckpointDecision::Refuse(errors::INVALID_STATE);
    };
    if action == Action::ShardEnded {
        // SHARD_END is stored by the client once every record was processed; any
        // checkpoint now is at or before it.
        return match sequence_number {
            None | Some("SHARD_END") => CheckpointDecision::Succeed,
            Some(s) if is_decimal(s) => CheckpointDecision::Succeed,
            Some(_) => CheckpointDecision::Refuse(errors::ILLEGAL_ARGUMENT),
        };
    }
    match sequence_number {
        None => match last_delivered {
            Some(last) => CheckpointDecision::Store(last.clone()),
            None => CheckpointDecision::Succeed,
        },
        Some(s) if !is_decimal(s) => CheckpointDecision::Refuse(errors::ILLEGAL_ARGUMENT),
        Some(s) => {
            let at = Position { sequence: s.to_owned(), sub_sequence: sub_sequence_number.unwrap_or(0) };
            match last_delivered {
                Some(last) if at <= *last => CheckpointDecision::Store(at),
                // Beyond what this child was given: it cannot have processed it.
                _ => CheckpointDecision::Refuse(errors::ILLEGAL_ARGUMENT),
            }
        }
    }
}

fn is_decimal(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_digit())
}

/// How a line read while waiting for the answer to an action is to be handled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reaction {
    /// The action is answered.
    Done,
    /// A checkpoint request: decide it with [`decide_checkpoint`], then answer.
    Checkpoint {
        /// As the child sent it.
        sequence_number: Option<String>,
        /// As the child sent it.
        sub_sequence_number: Option<u64>,
    },
    /// Nothing to do (a blank line).
    Ignore,
    /// Log the line and go on waiting.
    Skip(String),
    /// The child broke the protocol (a status for another action): restart it.
    Violation(String),
}

/// What a line from the child means while `action` waits for its status.
pub fn react(action: Action, line: &str) -> Reaction {
    match parse_line(line) {
        FromChild::Blank => Reaction::Ignore,
        FromChild::Noise(text) => Reaction::Skip(text),
        FromChild::Status { response_for } if response_for == action.name() => Reaction::Done,
        FromChild::Status { response_for } => Reaction::Violation(format!(
            "the child answered {response_for:?} while {:?} was waiting for its status",
            action.name()
        )),
        FromChild::Checkpoint { sequence_number, sub_sequence_number } => {
            Reaction::Checkpoint { sequence_number, sub_sequence_number }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pos(s: &str, sub: u64) -> Position {
        Position { sequence: s.into(), sub_sequence: sub }
    }

    #[test]
    fn messages_to_the_child_have_the_protocols_fields() {
        let init =
            ToChild::Initialize { shard_id: "shardId-1".into(), sequence_number: None, sub_sequence_number: None };
        let v: Value = serde_json::from_str(&init.to_line()).unwrap();
        assert_eq!(
            v,
            json!({"action":"initialize","shardId":"shardId-1","sequenceNumber":null,"subSequenceNumber":null})
        );
        let record = JsonRecord {
            action: "record",
            data: "aGk=".into(),
            partition_key: "pk".into(),
            sequence_number: "49".into(),
            sub_sequence_number: 0,
            approximate_arrival_timestamp: 1700,
        };
        let batch = ToChild::ProcessRecords { records: vec![record], millis_behind_latest: 5 };
        let v: Value = serde_json::from_str(&batch.to_line()).unwrap();
        assert_eq!(
            v,
            json!({"action":"processRecords","millisBehindLatest":5,"records":[{"action":"record","data":"aGk=",
                "partitionKey":"pk","sequenceNumber":"49","subSequenceNumber":0,"approximateArrivalTimestamp":1700}]})
        );
        for (m, name) in [
            (ToChild::LeaseLost, "leaseLost"),
            (ToChild::ShardEnded, "shardEnded"),
            (ToChild::ShutdownRequested, "shutdownRequested"),
        ] {
            assert_eq!(serde_json::from_str::<Value>(&m.to_line()).unwrap(), json!({ "action": name }));
        }
        let answer = ToChild::Checkpoint { sequence_number: None, sub_sequence_number: None, error: None };
        assert_eq!(
            serde_json::from_str::<Value>(&answer.to_line()).unwrap(),
            json!({"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null,"error":null}),
            "kclpy needs both sequence keys even when null"
        );
        assert!(answer.to_line().ends_with('\n') && answer.to_line().matches('\n').count() == 1);
    }

    #[test]
    fn lines_from_the_child() {
        assert_eq!(parse_line(""), FromChild::Blank);
        assert_eq!(parse_line("  \r"), FromChild::Blank);
        assert_eq!(parse_line("hello"), FromChild::Noise("hello".into()));
        assert_eq!(parse_line("[1,2]"), FromChild::Noise("[1,2]".into()));
        assert_eq!(parse_line(r#"{"action":"dance"}"#), FromChild::Noise(r#"{"action":"dance"}"#.into()));
        assert_eq!(
            parse_line(r#"{"action": "status", "responseFor": "initialize"}"#),
            FromChild::Status { response_for: "initialize".into() }
        );
        assert_eq!(
            parse_line(r#"{"action": "checkpoint", "sequenceNumber": "123", "subSequenceNumber": 4}"#),
            FromChild::Checkpoint { sequence_number: Some("123".into()), sub_sequence_number: Some(4) }
        );
        // aws-kcl leaves subSequenceNumber out.
        assert_eq!(
            parse_line(r#"{"action":"checkpoint","sequenceNumber":"123"}"#),
            FromChild::Checkpoint { sequence_number: Some("123".into()), sub_sequence_number: None }
        );
        assert_eq!(
            parse_line(r#"{"action":"checkpoint","sequenceNumber":null,"subSequenceNumber":null}"#),
            FromChild::Checkpoint { sequence_number: None, sub_sequence_number: None }
        );
    }

    #[test]
    fn reactions_while_waiting() {
        let a = Action::ProcessRecords;
        assert_eq!(react(a, r#"{"action":"status","responseFor":"processRecords"}"#), Reaction::Done);
        assert!(matches!(react(a, r#"{"action":"status","responseFor":"initialize"}"#), Reaction::Violation(_)));
        assert_eq!(react(a, ""), Reaction::Ignore);
        assert_eq!(react(a, "garbage"), Reaction::Skip("garbage".into()));
        assert_eq!(
            react(a, r#"{"action":"checkpoint","sequenceNumber":null}"#),
            Reaction::Checkpoint { sequence_number: None, sub_sequence_number: None }
        );
    }

    #[test]
    fn checkpoints_are_allowed_only_while_records_shard_end_or_shutdown_wait() {
        let last = pos("100", 0);
        let refused = CheckpointDecision::Refuse(errors::INVALID_STATE);
        for action in [None, Some(Action::Initialize), Some(Action::LeaseLost)] {
            assert_eq!(decide_checkpoint(action, None, None, Some(&last)), refused, "{action:?}");
        }
        let pr = Some(Action::ProcessRecords);
        assert_eq!(decide_checkpoint(pr, None, None, Some(&last)), CheckpointDecision::Store(last.clone()));
        assert_eq!(decide_checkpoint(pr, None, None, None), CheckpointDecision::Succeed, "nothing delivered yet");
        assert_eq!(decide_checkpoint(pr, Some("99"), Some(3), Some(&last)), CheckpointDecision::Store(pos("99", 3)));
        assert_eq!(decide_checkpoint(pr, Some("100"), None, Some(&last)), CheckpointDecision::Store(pos("100", 0)));
        let illegal = CheckpointDecision::Refuse(errors::ILLEGAL_ARGUMENT);
        assert_eq!(decide_checkpoint(pr, Some("101"), None, Some(&last)), illegal, "beyond the records delivered");
        assert_eq!(decide_checkpoint(pr, Some("100"), Some(1), Some(&last)), illegal);
        assert_eq!(decide_checkpoint(pr, Some("5"), None, None), illegal);
        assert_eq!(decide_checkpoint(pr, Some("12a"), None, Some(&last)), illegal);
        assert_eq!(decide_checkpoint(pr, Some("SHARD_END"), None, Some(&last)), illegal);
        let sr = Some(Action::ShutdownRequested);
        assert_eq!(decide_checkpoint(sr, None, None, Some(&last)), CheckpointDecision::Store(last.clone()));
        let se = Some(Action::ShardEnded);
        assert_eq!(decide_checkpoint(se, None, None, Some(&last)), CheckpointDecision::Succeed);
        assert_eq!(decide_checkpoint(se, Some("SHARD_END"), None, None), CheckpointDecision::Succeed);
        assert_eq!(decide_checkpoint(se, Some("x"), None, None), illegal);
    }

    #[test]
    fn client_errors_are_named_as_kcl_exceptions() {
        use kinesis_butler_client::ErrorKind;
        assert_eq!(error_name(ErrorKind::LeaseLost), "ShutdownException");
        assert_eq!(error_name(ErrorKind::Connection), "ThrottlingException");
        assert_eq!(error_name(ErrorKind::Server), "InvalidStateException");
        assert_eq!(error_name(ErrorKind::InvalidArgument), "IllegalArgumentException");
    }

    #[test]
    fn positions_compare_as_numbers() {
        assert!(pos("9", 0) < pos("10", 0));
        assert!(pos("10", 1) > pos("10", 0));
        assert_eq!(pos("010", 0).cmp(&pos("10", 0)), Ordering::Equal);
    }
}
