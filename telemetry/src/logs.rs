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

/// The subscriber [`init`] installs, writing to `writer` (a test passes a buffer).
pub fn subscriber<W>(format: LogFormat, writer: W) -> Box<dyn Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    // One JSON shape for both binaries: an event's fields at the top level next to `message`, no span
    // (`{"timestamp","level","message",<fields>...,"target"}`), so one log pipeline rule reads both.
    match format {
        LogFormat::Text => Box::new(builder.finish()),
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .finish(),
        ),
    }
}

/// Installs the process-wide subscriber (stderr). Call once, first thing in `main`.
pub fn init(format: LogFormat) {
    subscriber(format, std::io::stderr).init();
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

    fn one_json_line() -> serde_json::Value {
        let buf = Buffer::default();
        let out = buf.clone();
        let sub = subscriber(LogFormat::Json, move || buf.clone());
        tracing::subscriber::with_default(sub, || {
            tracing::info!(resource = "dp", "device list changed");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        serde_json::from_str(text.lines().last().unwrap()).unwrap()
    }

    #[test]
    fn json_lines_are_flat() {
        let line = one_json_line();
        assert_eq!(line["level"], "INFO");
        assert_eq!(line["message"], "device list changed");
        assert_eq!(line["resource"], "dp");
        assert!(line.get("fields").is_none(), "{line}");
    }
}
