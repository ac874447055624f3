//! The client's `tracing` events (INFO and above) as one line of text each, for
//! bindings that hand them to their language's logger (Python `logging`, a JavaScript
//! function). Span fields (stream, shard, epoch) are appended as `key=value` pairs.

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;
use tracing_subscriber::registry::LookupSpan;

/// Installs a process-wide `tracing` subscriber that passes every event of this crate
/// at INFO or above to `sink` as (level, message with fields). Does nothing when the
/// process already has a subscriber; returns whether this one was installed.
pub fn forward_logs(sink: impl Fn(Level, String) + Send + Sync + 'static) -> bool {
    let filter = tracing_subscriber::filter::Targets::new().with_target("kinesis_butler_client", Level::INFO);
    tracing_subscriber::registry().with(Forward(sink).with_filter(filter)).try_init().is_ok()
}

/// `key=value` pairs of a span, kept in its extensions.
struct SpanFields(String);

#[derive(Default)]
struct Collect {
    message: String,
    fields: String,
}

impl Visit for Collect {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.message, "{value:?}");
        } else {
            let _ = write!(self.fields, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message.push_str(value);
        } else {
            let _ = write!(self.fields, " {}={value}", field.name());
        }
    }
}

struct Forward<F>(F);

impl<S, F> Layer<S> for Forward<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    F: Fn(Level, String) + Send + Sync + 'static,
{
    fn on_new_span(&self, attrs: &tracing::span::Attributes<'_>, id: &tracing::span::Id, ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        attrs.record(&mut collect);
        if let Some(span) = ctx.span(id) {
            span.extensions_mut().insert(SpanFields(collect.fields));
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut collect = Collect::default();
        event.record(&mut collect);
        let mut text = collect.message;
        if let Some(scope) = ctx.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    text.push_str(&fields.0);
                }
            }
        }
        text.push_str(&collect.fields);
        (self.0)(*event.metadata().level(), text);
    }
}
