//! The client against a server with TLS and a bearer token: the right CA and token
//! read records; a wrong token is reported at once (not retried forever).

mod common;

use std::sync::Arc;

use anyhow::Result;
use common::client::{no_work, spawn, stop, test_options, Journal, Recorder};
use common::*;
use kinesis_butler_client::{Consumer, ConsumerOptions, ErrorKind, TlsOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// A CA and a server certificate for localhost, written to a temporary directory.
fn make_pki() -> Result<(tempfile::TempDir, String)> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    ca_params.distinguished_name.push(DnType::CommonName, "client test CA");
    let ca = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(vec!["localhost".to_owned()])?;
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server = server_params.signed_by(&server_key, &issuer)?;
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("server.pem"), server.pem())?;
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem())?;
    Ok((dir, ca.pem()))
}

#[tokio::test]
async fn tls_and_bearer_token() -> Result<()> {
    let kinesis = kinesis_client(Emulator::Kinesalite);
    let stream = unique("client-tls");
    create_stream(&kinesis, &stream, 1).await?;
    put_records(&kinesis, &stream, 0, 50).await?;
    let (pki, ca) = make_pki()?;
    let dir = tempfile::tempdir()?;
    let store = format!("sqlite://{}", dir.path().join("b.db").display());
    let (cert, key) = (pki.path().join("server.pem"), pki.path().join("server.key"));
    let flags =
        ["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap(), "--auth-token", "open sesame"];
    let server = TestServer::start(&store, Emulator::Kinesalite, &flags).await?;
    let endpoint = format!("https://127.0.0.1:{}", server.port());
    let tls = TlsOptions { ca_certificate_pem: Some(ca), domain_name: Some("localhost".into()), ..Default::default() };

    let journal = Journal::default();
    let options =
        ConsumerOptions { auth_token: Some("open sesame".into()), tls: Some(tls.clone()), ..test_options("tls", 10) };
    let consumer = Arc::new(Consumer::new(&endpoint, "app", [&stream], options)?);
    let task = spawn(&consumer, Recorder { consumer: "a".into(), journal: journal.clone(), work: no_work() });
    let handled = |j: &Journal| j.batches().iter().map(|b| b.sequences.len()).sum::<usize>();
    journal.wait_until(60, "all records over TLS", |j| handled(j) >= 50).await?;
    stop(&consumer, task).await??;

    let options = ConsumerOptions { auth_token: Some("wrong".into()), tls: Some(tls), ..test_options("tls", 10) };
    let consumer = Consumer::new(&endpoint, "app", [&stream], options)?;
    let err =
        within(30, "a refused token to be reported", consumer.run(no_work_handler())).await?.expect_err("refused");
    assert_eq!(err.kind(), ErrorKind::Unauthenticated, "{err}");
    Ok(())
}

fn no_work_handler() -> impl kinesis_butler_client::Handler {
    |_batch: kinesis_butler_client::Batch| async { Ok::<(), kinesis_butler_client::HandlerError>(()) }
}
