//! Log setup shared by agent and operator: text or JSON lines on stderr, filtered by `RUST_LOG` (default `info`).

use tracing::Subscriber;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Where a JSON line puts an event's fields. Each binary keeps the shape its log consumers (and tests) know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonShape {
    /// `{"timestamp","level","message",<fields>...,"target"}`: fields at the top level, no span (the operator's).
    Flat,
    /// `{"timestamp","level","fields":{"message",...},"target"}` plus `span`/`spans` inside one (the agent's, and
    /// tracing-subscriber's default).
    Nested,
}

/// The subscriber [`init`] installs, writing to `writer` (a test passes a buffer).
pub fn subscriber<W>(
    format: LogFormat,
    shape: JsonShape,
    writer: W,
) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match (format, shape) {
        (LogFormat::Text, _) => Box::new(builder.finish()),
        (LogFormat::Json, JsonShape::Nested) => Box::new(builder.json().finish()),
        (LogFormat::Json, JsonShape::Flat) => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish(),
        ),
    }
}

/// Installs the process-wide subscriber (stderr). Call once, first thing in `main`.
pub fn init(format: LogFormat, shape: JsonShape) {
    subscriber(format, shape, std::io::stderr).init();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn one_json_line(shape: JsonShape) -> serde_json::Value {
        let buf = Buffer::default();
        let out = buf.clone();
        let sub = subscriber(LogFormat::Json, shape, move || buf.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(resource = "dp", "device list changed");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }

    #[test]
    fn json_lines_have_the_shape_each_binary_promises() {
        let flat = one_json_line(JsonShape::Flat);
        assert_eq!(flat["level"], "INFO");
        assert_eq!(flat["message"], "device list changed");
        assert_eq!(flat["resource"], "dp");
        assert!(flat.get("fields").is_none(), "{flat}");

        let nested = one_json_line(JsonShape::Nested);
        assert_eq!(nested["level"], "INFO");
        assert_eq!(nested["fields"]["message"], "device list changed");
        assert_eq!(nested["fields"]["resource"], "dp");
        assert!(nested.get("message").is_none(), "{nested}");
    }
}
