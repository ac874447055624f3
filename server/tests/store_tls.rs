//! Store URLs with TLS and passwords: the PostgreSQL store over TLS (`sslmode=require`)
//! against the local server's certificate, verified (a server certificate that the
//! given root does not vouch for is refused), and no password in any error.
//!
//! The local PostgreSQL is Debian's, which serves TLS with the "snakeoil" certificate
//! for `localhost`; we connect to 127.0.0.1 (`hostaddr`) and verify the name `localhost`.

use std::path::Path;

use kinesis_butler::store::{self, GroupKey};

const SNAKEOIL: &str = "/etc/ssl/certs/ssl-cert-snakeoil.pem";

fn url(params: &str) -> String {
    format!("postgres://postgres:s3cret-pw@localhost:5432/test?hostaddr=127.0.0.1&{params}")
}

#[tokio::test]
async fn postgres_over_tls_is_verified_and_passwords_stay_out_of_errors() -> anyhow::Result<()> {
    if !Path::new(SNAKEOIL).exists() {
        // services.sh installs Debian's PostgreSQL, which creates it; say so loudly if not.
        anyhow::bail!("{SNAKEOIL} is missing: the local PostgreSQL serves no TLS to test against");
    }
    let schema = format!("kb2_tls_{}", std::process::id());
    let verified = url(&format!("sslmode=require&sslrootcert={SNAKEOIL}&schema={schema}"));
    let store = store::open(&verified).await.map_err(|e| anyhow::anyhow!("TLS store: {e}"))?;
    let leases = store.read_leases(&GroupKey::new("app", "stream")).await?;
    assert!(leases.is_empty(), "a fresh schema has no leases");

    // A CA that did not sign the server's certificate: refused, not downgraded.
    let dir = tempfile::tempdir()?;
    let other_ca = dir.path().join("other-ca.pem");
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    std::fs::write(&other_ca, params.self_signed(&key)?.pem())?;
    let wrong_root = url(&format!("sslmode=require&sslrootcert={}&schema={schema}", other_ca.display()));
    let err = store::open(&wrong_root).await.err().expect("a certificate the root does not vouch for").to_string();
    assert!(err.to_lowercase().contains("certificate"), "a certificate error: {err}");
    assert!(!err.contains("s3cret-pw"), "the password leaked into an error: {err}");

    // A root file that does not exist is a clear error too.
    let missing = store::open(&url("sslmode=require&sslrootcert=/nonexistent/ca.pem")).await;
    let err = missing.err().expect("a missing root file is refused").to_string();
    assert!(err.contains("/nonexistent/ca.pem") && !err.contains("s3cret-pw"), "{err}");

    let (client, connection) =
        tokio_postgres::connect("postgres://postgres@127.0.0.1:5432/test", tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE")).await?;
    Ok(())
}
