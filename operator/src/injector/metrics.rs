//! The injector's metrics, on the operator's `/metrics` (every replica serves the webhook, so every replica
//! counts its own requests).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// `pods` (the injector) or `nads` (the NAD warnings).
    pub webhook: &'static str,
    /// `patched`, `unchanged`, `warned` (admitted unchanged with warnings), `bad_request`, `not_synced`.
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    pub webhook: &'static str,
}

type Durations = Family<WebhookLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct InjectorMetrics {
    pub requests: Family<RequestLabels, Counter>,
    /// Time from the request read to the answer written, per webhook: what the webhook adds to an admission.
    pub duration: Durations,
    pub renewals: Counter,
    pub cert_expiry: Gauge,
}

impl Default for InjectorMetrics {
    fn default() -> Self {
        // 50 µs to ~2 s in steps of 1.5: fine enough for a p50 of well under a millisecond.
        fn histogram() -> Histogram {
            Histogram::new(exponential_buckets(0.00005, 1.5, 27))
        }
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(histogram as fn() -> Histogram),
            renewals: Counter::default(),
            cert_expiry: Gauge::default(),
        }
    }
}

impl InjectorMetrics {
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("macvtap_operator");
        r.register(
            "webhook_requests",
            "Admission requests answered by this replica's webhooks, by outcome",
            self.requests.clone(),
        );
        r.register(
            "webhook_duration_seconds",
            "Time this replica took to answer an admission request",
            self.duration.clone(),
        );
        r.register(
            "webhook_certificate_renewals",
            "Webhook certificates this replica wrote into the Secret",
            self.renewals.clone(),
        );
        r.register(
            "webhook_certificate_expiry_timestamp_seconds",
            "When the serving certificate this replica loaded expires (Unix time)",
            self.cert_expiry.clone(),
        );
    }

    pub fn answered(&self, webhook: &'static str, outcome: &'static str, seconds: f64) {
        self.requests
            .get_or_create(&RequestLabels { webhook, outcome })
            .inc();
        self.duration
            .get_or_create(&WebhookLabels { webhook })
            .observe(seconds);
    }
}
