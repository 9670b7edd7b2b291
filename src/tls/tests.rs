use super::*;

fn dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tapwire-certs-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_pair(d: &Path, host: &str) -> (PathBuf, PathBuf) {
    let key = rcgen::generate_simple_self_signed(vec![host.into()]).unwrap();
    let (c, k) = (d.join("cert.pem"), d.join("key.pem"));
    std::fs::write(&c, key.cert.pem()).unwrap();
    std::fs::write(&k, key.signing_key.serialize_pem()).unwrap();
    (c, k)
}

#[test]
fn loads_and_reloads_and_keeps_the_old_one_on_error() {
    let d = dir("reload");
    let (c, k) = write_pair(&d, "a.example");
    let certs = Certs::load(&c, &k).unwrap();
    let first = certs.current();
    assert_eq!(first.alpn_protocols, vec![b"http/1.1".to_vec()]);
    let suites: Vec<_> = first
        .crypto_provider()
        .cipher_suites
        .iter()
        .map(|s| s.suite())
        .collect();
    assert_eq!(suites[0], rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    assert!(first.ignore_client_order, "the server's order wins");
    write_pair(&d, "b.example");
    certs.reload().unwrap();
    assert!(
        !Arc::ptr_eq(&first, &certs.current()),
        "a new configuration"
    );
    let second = certs.current();
    std::fs::write(&k, "not a key").unwrap();
    let err = certs.reload().unwrap_err();
    assert!(
        err.contains("--tls-key") && err.contains("no private key"),
        "{err}"
    );
    assert!(Arc::ptr_eq(&second, &certs.current()), "the old one stays");
    std::fs::remove_dir_all(&d).unwrap();
}

#[test]
fn errors_name_the_file_and_the_fix() {
    let d = dir("errors");
    let (c, k) = write_pair(&d, "a.example");
    let missing = d.join("missing.pem");
    let err = Certs::load(&missing, &k).unwrap_err();
    assert!(
        err.starts_with("--tls-cert") && err.contains("cannot read"),
        "{err}"
    );
    let err = Certs::load(&k, &k).unwrap_err();
    assert!(err.contains("no CERTIFICATE block"), "{err}");
    // A key that is not the certificate's.
    let other = dir("errors-other");
    let (_, other_key) = write_pair(&other, "b.example");
    let err = Certs::load(&c, &other_key).unwrap_err();
    assert!(err.contains("does not go with"), "{err}");
    std::fs::remove_dir_all(&d).unwrap();
    std::fs::remove_dir_all(&other).unwrap();
}
