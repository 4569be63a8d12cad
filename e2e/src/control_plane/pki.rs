//! The run's certificates, made fresh for every control plane: a CA, the API server's serving certificate, client
//! certificates (admin, the API server towards kubelets, one per node) and the ServiceAccount signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

use super::kubeconfig::write_private;
use super::{ClusterSpec, Result};

#[derive(Debug, Clone)]
pub(super) struct Certs {
    pub ca: PathBuf,
    pub serving_cert: PathBuf,
    pub serving_key: PathBuf,
    pub admin_cert: PathBuf,
    pub admin_key: PathBuf,
    pub sa_key: PathBuf,
    pub sa_pub: PathBuf,
    /// The API server's client certificate towards kubelets (logs, exec), in `system:masters`.
    pub kubelet_client_cert: PathBuf,
    pub kubelet_client_key: PathBuf,
}

pub(super) fn write_certs(dir: &Path, cluster: Option<&ClusterSpec>) -> Result<Certs> {
    let file = |name: &str| dir.join(name);
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "macvtap-e2e-ca");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    // The apiserver's own loopback client and in-cluster clients use these names.
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "localhost".into(),
        "kubernetes".into(),
        "kubernetes.default".into(),
        "kubernetes.default.svc".into(),
        "kubernetes.default.svc.cluster.local".into(),
        "10.0.0.1".into(),
    ])?;
    if let Some(c) = cluster {
        for ip in [c.host_ip, c.service_ip] {
            serving
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(ip.into()));
        }
    }
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    serving.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &issuer)?;

    // Organization system:masters is the group the default RBAC binds to cluster-admin.
    let mut admin = CertificateParams::new(Vec::<String>::new())?;
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_key = KeyPair::generate()?;
    let admin_cert = admin.signed_by(&admin_key, &issuer)?;

    // ES256 ServiceAccount token signing key.
    let sa_key = KeyPair::generate()?;

    let client_cert = |cn: &str, org: &str, cert: PathBuf, key: PathBuf| -> Result<()> {
        let mut p = CertificateParams::new(Vec::<String>::new())?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.distinguished_name.push(DnType::OrganizationName, org);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let k = KeyPair::generate()?;
        let c = p.signed_by(&k, &issuer)?;
        write_private(&cert, c.pem().as_bytes())?;
        write_private(&key, k.serialize_pem().as_bytes())
    };
    client_cert(
        "kube-apiserver-kubelet-client",
        "system:masters",
        file("kubelet-client.crt"),
        file("kubelet-client.key"),
    )?;
    for node in cluster.map(|c| c.nodes.as_slice()).unwrap_or_default() {
        client_cert(
            &format!("system:node:{node}"),
            "system:nodes",
            file(&format!("node-{node}.crt")),
            file(&format!("node-{node}.key")),
        )?;
    }

    let certs = Certs {
        ca: file("ca.crt"),
        serving_cert: file("apiserver.crt"),
        serving_key: file("apiserver.key"),
        admin_cert: file("admin.crt"),
        admin_key: file("admin.key"),
        sa_key: file("sa.key"),
        sa_pub: file("sa.pub"),
        kubelet_client_cert: file("kubelet-client.crt"),
        kubelet_client_key: file("kubelet-client.key"),
    };
    write_private(&certs.ca, ca_cert.pem().as_bytes())?;
    write_private(&certs.serving_cert, serving_cert.pem().as_bytes())?;
    write_private(&certs.serving_key, serving_key.serialize_pem().as_bytes())?;
    write_private(&certs.admin_cert, admin_cert.pem().as_bytes())?;
    write_private(&certs.admin_key, admin_key.serialize_pem().as_bytes())?;
    write_private(&certs.sa_key, sa_key.serialize_pem().as_bytes())?;
    write_private(&certs.sa_pub, sa_key.public_key_pem().as_bytes())?;
    Ok(certs)
}
