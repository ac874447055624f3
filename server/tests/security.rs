//! TLS, mutual TLS and the bearer token, with a CA made for the test.

mod common;

use anyhow::Result;
use common::*;
use kinesis_butler_proto as pb;
use pb::butler_client::ButlerClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::Code;

struct Pki {
    dir: tempfile::TempDir,
    ca: String,
    client_cert: String,
    client_key: String,
}

impl Pki {
    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

fn make_pki() -> Result<Pki> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages =
        vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(DnType::CommonName, "kinesis-butler test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &issuer)?;

    let client_key = KeyPair::generate()?;
    let mut client_params = CertificateParams::new(vec!["processor".to_owned()])?;
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client = client_params.signed_by(&client_key, &issuer)?;

    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("ca.pem"), ca.pem())?;
    std::fs::write(dir.path().join("server.pem"), server.pem())?;
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())?;
    Ok(Pki { dir, ca: ca.pem(), client_cert: client.pem(), client_key: client_key.serialize_pem() })
}

async fn tls_channel(port: u16, pki: &Pki, with_identity: bool) -> Result<Channel, tonic::transport::Error> {
    let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&pki.ca)).domain_name("localhost");
    if with_identity {
        tls = tls.identity(Identity::from_pem(&pki.client_cert, &pki.client_key));
    }
    Channel::from_shared(format!("https://127.0.0.1:{port}")).expect("uri").tls_config(tls)?.connect().await
}

fn describe(token: Option<&str>) -> tonic::Request<pb::DescribeLeasesRequest> {
    let mut req = tonic::Request::new(pb::DescribeLeasesRequest { app: "app".into(), stream: "s".into() });
    if let Some(t) = token {
        req.metadata_mut().insert("authorization", format!("Bearer {t}").parse().expect("header"));
    }
    req
}

async fn status_of(channel: Channel, token: Option<&str>) -> Code {
    match ButlerClient::new(channel).describe_leases(describe(token)).await {
        Ok(_) => Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn tls_listener_and_bearer_token() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = make_pki()?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("t.db").display());
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let server = TestServer::start(
        &store,
        Emulator::Kinesalite,
        &["--tls-cert", &cert, "--tls-key", &key, "--auth-token", "correct horse"],
    )
    .await?;
    let port = server.port();

    let channel = within(10, "TLS connect", tls_channel(port, &pki, false)).await??;
    assert_eq!(status_of(channel.clone(), None).await, Code::Unauthenticated, "no token");
    assert_eq!(status_of(channel.clone(), Some("wrong horse")).await, Code::Unauthenticated, "wrong token");
    assert_eq!(status_of(channel.clone(), Some("correct hors")).await, Code::Unauthenticated, "prefix of the token");
    assert_eq!(status_of(channel.clone(), Some("correct horse")).await, Code::Ok, "right token over TLS");

    // Health stays open for load balancers.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let resp = health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await?.into_inner();
    assert_eq!(resp.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);

    // Plain text to a TLS listener does not get through.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}"))?.connect().await;
    if let Ok(plain) = plain {
        assert_ne!(
            status_of(plain, Some("correct horse")).await,
            Code::Ok,
            "plaintext call accepted by a TLS listener"
        );
    }
    Ok(())
}

#[tokio::test]
async fn mutual_tls_requires_a_client_certificate() -> Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let pki = make_pki()?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("t.db").display());
    let (cert, key, ca) = (pki.path("server.pem"), pki.path("server.key"), pki.path("ca.pem"));
    let server = TestServer::start(
        &store,
        Emulator::Kinesalite,
        &["--tls-cert", &cert, "--tls-key", &key, "--tls-client-ca", &ca],
    )
    .await?;
    let port = server.port();

    let with_cert = within(10, "mTLS connect", tls_channel(port, &pki, true)).await??;
    assert_eq!(status_of(with_cert, None).await, Code::Ok, "client certificate accepted");
    match within(10, "TLS connect without a certificate", tls_channel(port, &pki, false)).await? {
        Err(_) => {}
        Ok(channel) => assert_ne!(status_of(channel, None).await, Code::Ok, "call without a client certificate"),
    }
    Ok(())
}
