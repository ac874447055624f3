//! The client's `tracing` events handed to a binding's logger (Python `logging`, a
//! JavaScript logger object) with their structure: level, message, and the fields of
//! the event and of its spans (stream, shard, epoch…) as key/value pairs.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU8, Ordering};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// One event of the client, as a binding's logger receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogEvent {
    /// ERROR, WARN, INFO or DEBUG.
    pub level: Level,
    /// The message, without the fields.
    pub message: String,
    /// The spans' fields (outermost first), then the event's, as text.
    pub fields: Vec<(String, String)>,
}

impl LogEvent {
    /// The message followed by ` key=value` for each field (for text-only loggers).
    pub fn text(&self) -> String {
        let mut text = self.message.clone();
        for (key, value) in &self.fields {
            let _ = write!(text, " {key}={value}");
        }
        text
    }
}

/// The most detailed level forwarded: 0 ERROR, 1 WARN, 2 INFO (the default), 3 DEBUG.
static MAX_LEVEL: AtomicU8 = AtomicU8::new(2);

fn rank(level: Level) -> u8 {
    match level {
        Level::ERROR => 0,
        Level::WARN => 1,
        Level::INFO => 2,
        _ => 3,
    }
}

/// Sets the most detailed level forwarded (INFO by default; DEBUG adds every
/// checkpoint and routing decision). Takes effect at once.
pub fn set_log_level(level: Level) {
    MAX_LEVEL.store(rank(level), Ordering::Relaxed);
}

/// Installs a process-wide `tracing` subscriber that passes every event of this crate
/// at the level of [`set_log_level`] or above to `sink`. Does nothing when the process
/// already has a subscriber; returns whether this one was installed.
pub fn forward_log_events(sink: impl Fn(LogEvent) + Send + Sync + 'static) -> bool {
    let filter = tracing_subscriber::filter::Targets::new().with_target("kinesis_butler_client", Level::DEBUG);
    tracing_subscriber::registry().with(Forward(sink).with_filter(filter)).try_init().is_ok()
}

/// [`forward_log_events`] with each event as one line of text ([`LogEvent::text`]).
pub fn forward_logs(sink: impl Fn(Level, String) + Send + Sync + 'static) -> bool {
    forward_log_events(move |event| sink(event.level, event.text()))
}

/// Key/value pairs of a span, kept in its extensions.
struct SpanFields(Vec<(String, String)>);

#[derive(Default)]
struct Collect {
    message: String,
    fields: Vec<(String, String)>,
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            self.fields.push((field.name().to_owned(), format!("{value:?}")));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            self.fields.push((field.name().to_owned(), value.to_owned()));
        }
    }
}

struct Forward<F>(F);

impl<S, F> Layer<S> for Forward<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Fn(LogEvent) + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        attrs.record(&mut collect);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collect.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if rank(level) > MAX_LEVEL.load(Ordering::Relaxed) {
            return;
        }
        let mut collect = Collect::default();
        event.record(&mut collect);
        let mut fields = Vec::new();
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(span_fields) = span.extensions().get::<SpanFields>() {
                    fields.extend(span_fields.0.iter().cloned());
                }
            }
        }
        fields.extend(collect.fields);
        (self.0)(LogEvent { level, message: collect.message, fields });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_appends_the_fields() {
        let event = LogEvent {
            level: Level::WARN,
            message: "checkpoint failed".into(),
            fields: vec![("shard".into(), "s-1".into()), ("attempt".into(), "2".into())],
        };
        assert_eq!(event.text(), "checkpoint failed shard=s-1 attempt=2");
        assert!(rank(Level::DEBUG) > rank(Level::INFO) && rank(Level::ERROR) < rank(Level::WARN));
    }
}
