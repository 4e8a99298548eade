//! A throwaway certificate authority for TLS tests: a P-256 CA made fresh per test, the server and
//! client certificates it signs, and its PEM on disk so clients (`reqwest`, `ctr --tlscacert`,
//! prepull's CA options) and servers (docker-registry's `http.tls.clientcas`) can be pointed at it.
//! Nothing here touches the system trust store, so a client that is *not* given the CA must fail
//! with an unknown-issuer error, and a registry that trusts it for clients refuses certificates
//! from any other CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber, PKCS_ECDSA_P256_SHA256,
};

/// A test CA. Cheap to clone (shared); its files live until the last clone is dropped.
#[derive(Clone)]
pub struct TestCa(Arc<CaInner>);

struct CaInner {
    params: CertificateParams,
    key: KeyPair,
    cert_pem: String,
    cert_der: Vec<u8>,
    pem_path: PathBuf,
    dir: tempfile::TempDir,
}

/// A server certificate (leaf only) and its PKCS#8 key, both PEM, written next to the CA.
#[derive(Clone, Debug)]
pub struct ServerCert {
    pub cert_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

/// A client certificate (leaf only) and its PKCS#8 key, both PEM, written into a directory of the
/// caller's choosing (e.g. a `certs.d/<host>` dir as `client.cert` + `client.key`).
#[derive(Clone)]
pub struct ClientCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl ClientCert {
    /// Certificate then key in one PEM (containerd's single-file `client = "both.pem"` form).
    pub fn combined_pem(&self) -> String {
        format!("{}{}", self.cert_pem, self.key_pem)
    }

    /// The identity for `reqwest::ClientBuilder::identity`.
    pub fn reqwest_identity(&self) -> reqwest::Identity {
        reqwest::Identity::from_pem(self.combined_pem().as_bytes())
            .expect("parse the client certificate and key")
    }
}

// The key is a secret in spirit: keep it out of test output.
impl std::fmt::Debug for ClientCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientCert")
            .field("cert_path", &self.cert_path)
            .field("key_path", &self.key_path)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// A new CA named `prepull test CA <random>` (unique, so two CAs never look alike in errors).
    pub fn new() -> TestCa {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate the CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(
            DnType::CommonName,
            format!("prepull test CA {}", hex::encode(rand::random::<[u8; 4]>())),
        );
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key).expect("self-sign the CA");
        let dir = tempfile::Builder::new()
            .prefix("bench-tls-")
            .tempdir()
            .expect("create the CA's temp dir");
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, cert.pem()).expect("write ca.pem");
        TestCa(Arc::new(CaInner {
            cert_pem: cert.pem(),
            cert_der: cert.der().to_vec(),
            params,
            key,
            pem_path,
            dir,
        }))
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.0.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.0.cert_der
    }

    /// A file holding [`Self::cert_pem`], for clients that take a CA path.
    pub fn pem_path(&self) -> &Path {
        &self.0.pem_path
    }

    /// The CA as a root for `reqwest::ClientBuilder::add_root_certificate`.
    pub fn reqwest_certificate(&self) -> reqwest::Certificate {
        reqwest::Certificate::from_pem(self.cert_pem().as_bytes()).expect("parse the CA PEM")
    }

    /// A reqwest client that trusts this CA and nothing else (no system roots, no proxy).
    pub fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .no_proxy()
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.reqwest_certificate())
            .build()
            .expect("build an HTTPS client")
    }

    /// Issues a server certificate for `names` (IP addresses become IP SANs, the rest DNS SANs)
    /// and writes `<stem>.crt` / `<stem>.key` into `dir`.
    pub fn issue_server(&self, names: &[&str], dir: &Path, stem: &str) -> ServerCert {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a server key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names.clone()).expect("server cert params");
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // rustls-webpki insists on serverAuth when an EKU extension is present; Go too.
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let issuer = Issuer::from_params(&self.0.params, &self.0.key);
        let cert = params
            .signed_by(&key, &issuer)
            .expect("sign the server certificate");
        let cert_path = dir.join(format!("{stem}.crt"));
        let key_path = dir.join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write the server certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the server key");
        ServerCert {
            cert_pem: cert.pem(),
            cert_path,
            key_path,
        }
    }

    /// Issues a client certificate (CN `common_name`, extended key usage `clientAuth`, which Go's
    /// TLS server checks) and writes it to `<dir>/<cert_file>` and its key to `<dir>/<key_file>`.
    pub fn issue_client(
        &self,
        common_name: &str,
        dir: &Path,
        cert_file: &str,
        key_file: &str,
    ) -> ClientCert {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("generate a client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client cert params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name.to_string());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let issuer = Issuer::from_params(&self.0.params, &self.0.key);
        let cert = params
            .signed_by(&key, &issuer)
            .expect("sign the client certificate");
        std::fs::create_dir_all(dir).expect("create the client certificate's dir");
        let cert_path = dir.join(cert_file);
        let key_path = dir.join(key_file);
        std::fs::write(&cert_path, cert.pem()).expect("write the client certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the client key");
        ClientCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
        }
    }

    /// The CA's own temp dir (holds `ca.pem`).
    pub fn dir(&self) -> &Path {
        self.0.dir.path()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("pem_path", &self.0.pem_path)
            .finish_non_exhaustive()
    }
}

/// Positive 16-byte serials: unique per certificate, as clients that cache by issuer+serial expect.
fn random_serial() -> SerialNumber {
    let mut bytes = rand::random::<[u8; 16]>();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}
