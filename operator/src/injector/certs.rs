//! The webhook's CA and serving certificate without cert-manager: made with `rcgen`, kept in one Secret that every
//! replica reads, renewed before expiry. Pure apart from the key generation: the decision what to write is a
//! function of the Secret's contents and the clock, unit-tested below; `tls_secret` does the API calls.
//!
//! Rotation keeps every replica trusted while the others catch up: the serving certificate is renewed when a third
//! of its lifetime is left (replicas reload the Secret every few seconds, long before the old one expires). The CA
//! lives ten serving lifetimes and is replaced in two steps, so that the API server trusts a CA before any replica
//! serves a certificate of it: with two serving lifetimes left a *next* CA is made and joins the bundle
//! (`caBundle` = current + next + previous); with one left it becomes the current CA and signs the serving
//! certificate, and the old one stays in the bundle as *previous* until it expires (replicas still serving its
//! certificate stay trusted).

use std::collections::BTreeMap;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// Keys of the Secret (`tls.crt`/`tls.key`/`ca.crt` are also what cert-manager writes).
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const TLS_CERT: &str = "tls.crt";
pub const TLS_KEY: &str = "tls.key";
pub const PREVIOUS_CA_CERT: &str = "previous-ca.crt";
pub const NEXT_CA_CERT: &str = "next-ca.crt";
pub const NEXT_CA_KEY: &str = "next-ca.key";

/// How many serving lifetimes the CA lives.
const CA_LIFETIMES: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("unreadable {0}")]
    Unreadable(&'static str),
}

/// What the Secret holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
    pub previous_ca_cert: Option<String>,
    /// The CA that will replace the current one: (certificate, key).
    pub next_ca: Option<(String, String)>,
}

/// What the serving certificate is for.
#[derive(Debug, Clone)]
pub struct CertSettings {
    /// `<service>.<namespace>.svc` and its variants: the name the API server dials.
    pub dns_names: Vec<String>,
    /// Lifetime of a serving certificate.
    pub validity: Duration,
}

impl Bundle {
    /// From the Secret's data; `None` when anything is missing or unreadable (then a new bundle is made).
    pub fn from_data(data: &BTreeMap<String, Vec<u8>>) -> Option<Bundle> {
        let get = |k: &str| {
            data.get(k)
                .and_then(|v| String::from_utf8(v.clone()).ok())
                .filter(|s| !s.is_empty())
        };
        Some(Bundle {
            ca_cert: get(CA_CERT)?,
            ca_key: get(CA_KEY)?,
            cert: get(TLS_CERT)?,
            key: get(TLS_KEY)?,
            previous_ca_cert: get(PREVIOUS_CA_CERT),
            next_ca: get(NEXT_CA_CERT).zip(get(NEXT_CA_KEY)),
        })
    }

    pub fn to_data(&self) -> BTreeMap<String, Vec<u8>> {
        let mut d: BTreeMap<String, Vec<u8>> = [
            (CA_CERT, &self.ca_cert),
            (CA_KEY, &self.ca_key),
            (TLS_CERT, &self.cert),
            (TLS_KEY, &self.key),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.clone().into_bytes()))
        .collect();
        if let Some(p) = &self.previous_ca_cert {
            d.insert(PREVIOUS_CA_CERT.into(), p.clone().into_bytes());
        }
        if let Some((c, k)) = &self.next_ca {
            d.insert(NEXT_CA_CERT.into(), c.clone().into_bytes());
            d.insert(NEXT_CA_KEY.into(), k.clone().into_bytes());
        }
        d
    }

    /// What the API server must trust: the current CA, the next one, and the previous one while it is valid.
    pub fn ca_bundle(&self, now: OffsetDateTime) -> String {
        let mut b = self.ca_cert.clone();
        if let Some((next, _)) = &self.next_ca {
            b.push_str(next);
        }
        if let Some(p) = &self.previous_ca_cert
            && not_after(p).is_ok_and(|t| t > now)
        {
            b.push_str(p);
        }
        b
    }
}

/// When a PEM certificate expires.
pub fn not_after(pem: &str) -> Result<OffsetDateTime, CertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| CertError::Unreadable("PEM"))?;
    let cert = pem
        .parse_x509()
        .map_err(|_| CertError::Unreadable("certificate"))?;
    Ok(cert.validity().not_after.to_datetime())
}

/// The DNS names a Service is dialled by.
pub fn service_dns_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

/// The bundle to write, or `None` when `current` is good for now.
pub fn renewal(
    current: Option<&Bundle>,
    settings: &CertSettings,
    now: OffsetDateTime,
) -> Result<Option<Bundle>, CertError> {
    let validity = time::Duration::try_from(settings.validity).unwrap_or(time::Duration::DAY);
    let Some(current) = current else {
        return new_bundle(settings, now).map(Some);
    };
    let (Ok(ca_end), Ok(cert_end)) = (not_after(&current.ca_cert), not_after(&current.cert)) else {
        return new_bundle(settings, now).map(Some);
    };
    // The CA must outlive the next serving certificate: its successor takes over with one serving lifetime left,
    // after a lifetime in the bundle.
    if ca_end - now < validity {
        let (ca_cert, ca_key) = match &current.next_ca {
            Some(next) => next.clone(),
            None => new_ca(settings, now)?,
        };
        let key = KeyPair::from_pem(&ca_key)?;
        let issuer = Issuer::from_ca_cert_pem(&ca_cert, key)?;
        let (cert, key) = serving(&issuer, settings, now)?;
        return Ok(Some(Bundle {
            ca_cert,
            ca_key,
            cert,
            key,
            previous_ca_cert: (ca_end > now).then(|| current.ca_cert.clone()),
            next_ca: None,
        }));
    }
    if ca_end - now < validity * 2 && current.next_ca.is_none() {
        return Ok(Some(Bundle {
            next_ca: Some(new_ca(settings, now)?),
            ..current.clone()
        }));
    }
    if cert_end - now < validity / 3 {
        let key = KeyPair::from_pem(&current.ca_key)?;
        let issuer = Issuer::from_ca_cert_pem(&current.ca_cert, key)?;
        let (cert, key) = serving(&issuer, settings, now)?;
        return Ok(Some(Bundle {
            cert,
            key,
            ..current.clone()
        }));
    }
    Ok(None)
}

fn new_bundle(settings: &CertSettings, now: OffsetDateTime) -> Result<Bundle, CertError> {
    let (ca_cert, ca_key) = new_ca(settings, now)?;
    let issuer = Issuer::from_ca_cert_pem(&ca_cert, KeyPair::from_pem(&ca_key)?)?;
    let (cert, key) = serving(&issuer, settings, now)?;
    Ok(Bundle {
        ca_cert,
        ca_key,
        cert,
        key,
        previous_ca_cert: None,
        next_ca: None,
    })
}

/// A new CA: (PEM certificate, PEM key).
fn new_ca(settings: &CertSettings, now: OffsetDateTime) -> Result<(String, String), CertError> {
    let validity = time::Duration::try_from(settings.validity).unwrap_or(time::Duration::DAY);
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("macvtap-operator webhook CA {}", now.unix_timestamp()),
    );
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity * CA_LIFETIMES;
    let ca_key = KeyPair::generate()?;
    let ca_cert = params.self_signed(&ca_key)?.pem();
    Ok((ca_cert, ca_key.serialize_pem()))
}

/// A serving certificate (PEM cert, PEM key) for the settings' names.
fn serving(
    issuer: &Issuer<'_, KeyPair>,
    settings: &CertSettings,
    now: OffsetDateTime,
) -> Result<(String, String), CertError> {
    let validity = time::Duration::try_from(settings.validity).unwrap_or(time::Duration::DAY);
    let mut params = CertificateParams::new(settings.dns_names.clone())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        settings.dns_names.first().cloned().unwrap_or_default(),
    );
    params.distinguished_name = dn;
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    // A little slack for clocks behind ours.
    params.not_before = now - time::Duration::minutes(5);
    params.not_after = now + validity;
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, issuer)?.pem();
    Ok((cert, key.serialize_pem()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> CertSettings {
        CertSettings {
            dns_names: service_dns_names("op-webhook", "macvtap-system"),
            validity: Duration::from_secs(3600),
        }
    }

    #[test]
    fn a_new_bundle_then_nothing_until_a_third_is_left() {
        let now = OffsetDateTime::now_utc();
        let b = renewal(None, &settings(), now).unwrap().unwrap();
        assert!(b.previous_ca_cert.is_none());
        let end = not_after(&b.cert).unwrap();
        assert!((end - now - time::Duration::HOUR).abs() < time::Duration::SECOND);
        let ca_end = not_after(&b.ca_cert).unwrap();
        assert!(ca_end - now > time::Duration::hours(9));
        assert_eq!(Bundle::from_data(&b.to_data()), Some(b.clone()));

        assert_eq!(renewal(Some(&b), &settings(), now).unwrap(), None);
        let later = now + time::Duration::minutes(39);
        assert_eq!(renewal(Some(&b), &settings(), later).unwrap(), None);
        // 20 minutes left of 60: a new serving certificate from the same CA.
        let due = now + time::Duration::minutes(41);
        let r = renewal(Some(&b), &settings(), due).unwrap().unwrap();
        assert_eq!((&r.ca_cert, &r.ca_key), (&b.ca_cert, &b.ca_key));
        assert_ne!(r.cert, b.cert);
        assert_ne!(r.key, b.key);
        assert!(not_after(&r.cert).unwrap() > not_after(&b.cert).unwrap());
        assert_eq!(r.ca_bundle(due), b.ca_bundle(due));
    }

    #[test]
    fn a_new_ca_keeps_the_old_one_trusted_while_it_is_valid() {
        let now = OffsetDateTime::now_utc();
        let b = renewal(None, &settings(), now).unwrap().unwrap();
        let near_ca_end = now + time::Duration::hours(9) + time::Duration::minutes(30);
        let r = renewal(Some(&b), &settings(), near_ca_end)
            .unwrap()
            .unwrap();
        assert_ne!(r.ca_cert, b.ca_cert);
        assert_eq!(r.previous_ca_cert.as_deref(), Some(b.ca_cert.as_str()));
        let bundle = r.ca_bundle(near_ca_end);
        assert!(bundle.contains(&r.ca_cert) && bundle.contains(&b.ca_cert));
        // Once the old CA has expired it leaves the bundle.
        let after = now + time::Duration::hours(11);
        assert_eq!(r.ca_bundle(after), r.ca_cert);
    }

    #[test]
    fn the_serving_certificate_chains_to_the_ca_for_the_service_name() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
        let b = renewal(None, &settings(), OffsetDateTime::now_utc())
            .unwrap()
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(b.ca_cert.as_bytes()).unwrap())
            .unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(roots.into(), provider)
                .build()
                .unwrap();
        let cert = CertificateDer::from_pem_slice(b.cert.as_bytes()).unwrap();
        use rustls::client::danger::ServerCertVerifier;
        let name = ServerName::try_from("op-webhook.macvtap-system.svc").unwrap();
        verifier
            .verify_server_cert(&cert, &[], &name, &[], UnixTime::now())
            .unwrap();
        let wrong = ServerName::try_from("other.macvtap-system.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&cert, &[], &wrong, &[], UnixTime::now())
                .is_err()
        );
    }

    #[test]
    fn unreadable_secrets_are_replaced() {
        let mut data = renewal(None, &settings(), OffsetDateTime::now_utc())
            .unwrap()
            .unwrap()
            .to_data();
        data.insert(TLS_CERT.into(), b"garbage".to_vec());
        let b = Bundle::from_data(&data).unwrap();
        assert!(
            renewal(Some(&b), &settings(), OffsetDateTime::now_utc())
                .unwrap()
                .is_some()
        );
        data.remove(CA_KEY);
        assert!(Bundle::from_data(&data).is_none());
    }
}
