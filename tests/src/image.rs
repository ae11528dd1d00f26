//! Test images made by the tests: deterministic pseudo-random layers, Docker v2 and OCI
//! manifests, OCI indexes; pushed with a minimal client written here (raw HTTP), independent of
//! the crate under test.

use bytes::Bytes;
use futures::StreamExt;
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// OCI image manifest media type.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI index media type.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker v2 manifest media type.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";

/// `sha256:<hex>` of bytes.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// Deterministic pseudo-random bytes (xorshift), so large layers need not be stored.
pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut gen = Generator::new(seed);
    while out.len() < len {
        let chunk = gen.next_block();
        let take = (len - out.len()).min(chunk.len());
        out.extend_from_slice(&chunk[..take]);
    }
    out
}

struct Generator(u64);

impl Generator {
    fn new(seed: u64) -> Self {
        Generator(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next_block(&mut self) -> [u8; 8192] {
        let mut block = [0u8; 8192];
        for word in block.chunks_exact_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            word.copy_from_slice(&self.0.to_le_bytes());
        }
        block
    }
}

/// A blob's content: in memory, or generated on the fly (for GiB-sized layers).
#[derive(Clone, Debug)]
pub enum BlobData {
    /// Bytes held in memory.
    Bytes(Bytes),
    /// `size` pseudo-random bytes from `seed`, never held whole.
    Generated {
        /// Generator seed.
        seed: u64,
        /// Length.
        size: u64,
    },
}

impl BlobData {
    /// Length in bytes.
    pub fn size(&self) -> u64 {
        match self {
            BlobData::Bytes(b) => b.len() as u64,
            BlobData::Generated { size, .. } => *size,
        }
    }

    /// The content as a stream of 1 MiB chunks.
    pub fn stream(&self) -> futures::stream::BoxStream<'static, Result<Bytes, std::io::Error>> {
        match self.clone() {
            BlobData::Bytes(b) => futures::stream::once(async move { Ok(b) }).boxed(),
            BlobData::Generated { seed, size } => {
                let mut gen = Generator::new(seed);
                let mut left = size;
                futures::stream::poll_fn(move |_| {
                    if left == 0 {
                        return std::task::Poll::Ready(None);
                    }
                    let mut chunk = Vec::with_capacity(1 << 20);
                    while chunk.len() < (1 << 20) && (chunk.len() as u64) < left {
                        let block = gen.next_block();
                        let take = ((left - chunk.len() as u64).min(block.len() as u64)) as usize;
                        chunk.extend_from_slice(&block[..take]);
                    }
                    left -= chunk.len() as u64;
                    std::task::Poll::Ready(Some(Ok(Bytes::from(chunk))))
                })
                .boxed()
            }
        }
    }

    /// The digest, computed by streaming.
    pub fn digest(&self) -> String {
        match self {
            BlobData::Bytes(b) => sha256(b),
            BlobData::Generated { seed, size } => {
                let mut gen = Generator::new(*seed);
                let mut hasher = Sha256::new();
                let mut left = *size;
                while left > 0 {
                    let block = gen.next_block();
                    let take = left.min(block.len() as u64) as usize;
                    hasher.update(&block[..take]);
                    left -= take as u64;
                }
                format!("sha256:{}", hex::encode(hasher.finalize()))
            }
        }
    }
}

/// A blob with its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    /// `sha256:<hex>`.
    pub digest: String,
    /// Content.
    pub data: BlobData,
}

impl Blob {
    /// A blob from bytes.
    pub fn from_bytes(bytes: impl Into<Bytes>) -> Self {
        let data = BlobData::Bytes(bytes.into());
        Blob {
            digest: data.digest(),
            data,
        }
    }

    /// A generated blob of `size` bytes.
    pub fn generated(seed: u64, size: u64) -> Self {
        let data = BlobData::Generated { seed, size };
        Blob {
            digest: data.digest(),
            data,
        }
    }
}

/// A manifest (image or index) with everything it needs.
#[derive(Clone, Debug)]
pub struct TestImage {
    /// Manifest bytes as pushed.
    pub manifest: Bytes,
    /// Its media type.
    pub media_type: String,
    /// Its digest.
    pub digest: String,
    /// Blobs (config and layers), unique by digest, foreign layers excluded.
    pub blobs: Vec<Blob>,
    /// Child images of an index.
    pub children: Vec<TestImage>,
}

/// Manifest flavour.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Docker image manifest v2 schema 2.
    Docker,
    /// OCI image manifest.
    Oci,
}

/// Builds an image manifest.
pub struct ImageBuilder {
    format: Format,
    layers: Vec<(Blob, Option<String>)>,
    arch: String,
    annotation: Option<String>,
}

impl ImageBuilder {
    /// A new image of this format.
    pub fn new(format: Format) -> Self {
        ImageBuilder {
            format,
            layers: Vec::new(),
            arch: "amd64".into(),
            annotation: None,
        }
    }

    /// Adds a pseudo-random layer of `size` bytes.
    pub fn layer(mut self, seed: u64, size: usize) -> Self {
        self.layers
            .push((Blob::from_bytes(pseudo_random(seed, size)), None));
        self
    }

    /// Adds a generated layer (never held in memory).
    pub fn big_layer(mut self, seed: u64, size: u64) -> Self {
        self.layers.push((Blob::generated(seed, size), None));
        self
    }

    /// Adds a zero-byte layer.
    pub fn empty_layer(mut self) -> Self {
        self.layers.push((Blob::from_bytes(Vec::new()), None));
        self
    }

    /// Adds the previous layer again (same digest twice in one manifest).
    pub fn repeat_last_layer(mut self) -> Self {
        let last = self.layers.last().expect("a layer to repeat").clone();
        self.layers.push(last);
        self
    }

    /// Adds a foreign (non-distributable) layer that is not pushed, only referenced by URL.
    pub fn foreign_layer(mut self, seed: u64, size: usize) -> Self {
        let blob = Blob::from_bytes(pseudo_random(seed, size));
        self.layers.push((
            blob,
            Some("https://foreign.example.com/layer.tar.gz".into()),
        ));
        self
    }

    /// Sets the platform architecture written in the config.
    pub fn arch(mut self, arch: &str) -> Self {
        self.arch = arch.to_string();
        self
    }

    /// Adds an annotation so otherwise equal images get distinct digests.
    pub fn annotation(mut self, text: &str) -> Self {
        self.annotation = Some(text.to_string());
        self
    }

    /// The manifest, config and blobs.
    pub fn build(self) -> TestImage {
        let (manifest_type, config_type, layer_type, foreign_type) = match self.format {
            Format::Docker => (
                DOCKER_MANIFEST,
                "application/vnd.docker.container.image.v1+json",
                "application/vnd.docker.image.rootfs.diff.tar.gzip",
                "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
            ),
            Format::Oci => (
                OCI_MANIFEST,
                "application/vnd.oci.image.config.v1+json",
                "application/vnd.oci.image.layer.v1.tar+gzip",
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
            ),
        };
        let config = json!({
            "architecture": self.arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": self.layers.iter().map(|(b, _)| b.digest.clone()).collect::<Vec<_>>()},
        });
        let config = Blob::from_bytes(serde_json::to_vec(&config).unwrap());
        let layers: Vec<_> = self
            .layers
            .iter()
            .map(|(b, url)| match url {
                Some(url) => json!({"mediaType": foreign_type, "size": b.data.size(), "digest": b.digest, "urls": [url]}),
                None => json!({"mediaType": layer_type, "size": b.data.size(), "digest": b.digest}),
            })
            .collect();
        let mut manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": {"mediaType": config_type, "size": config.data.size(), "digest": config.digest},
            "layers": layers,
        });
        if let Some(a) = self.annotation {
            manifest["annotations"] = json!({"org.example.note": a});
        }
        let bytes = Bytes::from(serde_json::to_vec_pretty(&manifest).unwrap());
        let mut blobs = vec![config];
        for (blob, url) in self.layers {
            if url.is_none() && !blobs.iter().any(|b| b.digest == blob.digest) {
                blobs.push(blob);
            }
        }
        TestImage {
            digest: sha256(&bytes),
            manifest: bytes,
            media_type: manifest_type.to_string(),
            blobs,
            children: Vec::new(),
        }
    }
}

/// An OCI index over the given images, one platform each (architecture from position).
pub fn index(children: Vec<TestImage>) -> TestImage {
    let archs = ["amd64", "arm64", "ppc64le", "s390x", "riscv64", "386"];
    let manifests: Vec<_> = children
        .iter()
        .enumerate()
        .map(|(i, c)| {
            json!({"mediaType": c.media_type, "size": c.manifest.len(), "digest": c.digest,
                   "platform": {"architecture": archs[i % archs.len()], "os": "linux"}})
        })
        .collect();
    oci_index(manifests, children)
}

/// An OCI index listing `manifests` (descriptors), with `children` pushed before it.
fn oci_index(manifests: Vec<serde_json::Value>, children: Vec<TestImage>) -> TestImage {
    annotated_oci_index(manifests, children, None)
}

/// `oci_index` with the index's `annotations`, when given.
pub fn annotated_oci_index(
    manifests: Vec<serde_json::Value>,
    children: Vec<TestImage>,
    annotations: Option<serde_json::Value>,
) -> TestImage {
    let mut index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    if let Some(annotations) = annotations {
        index["annotations"] = annotations;
    }
    let bytes = Bytes::from(serde_json::to_vec(&index).unwrap());
    TestImage {
        digest: sha256(&bytes),
        manifest: bytes,
        media_type: OCI_INDEX.to_string(),
        blobs: Vec::new(),
        children,
    }
}

/// A 4-platform OCI index of small images (distinct layers per platform).
pub fn multi_arch(seed: u64, layers: usize, layer_size: usize) -> TestImage {
    let children = ["amd64", "arm64", "ppc64le", "s390x"]
        .iter()
        .enumerate()
        .map(|(i, arch)| {
            let mut b = ImageBuilder::new(Format::Oci).arch(arch);
            for l in 0..layers {
                b = b.layer(seed * 1000 + (i * 100 + l) as u64, layer_size);
            }
            b.build()
        })
        .collect();
    index(children)
}

/// An OCI artifact as cosign and oras write them: the empty config, one layer holding
/// `payload` (media type `layer_type`), an `artifactType`, and a `subject` when given (the OCI
/// 1.1 referrer); without one it is a cosign-legacy manifest found by its tag alone.
pub fn artifact(
    subject: Option<&TestImage>,
    artifact_type: &str,
    layer_type: &str,
    payload: &[u8],
) -> TestImage {
    signed_artifact(subject, artifact_type, layer_type, payload, "MEUCIQ-test")
}

/// A cosign signature of the image `digest` made with `key`, as `cosign sign --key` stores it:
/// the "simple signing" payload naming the digest as the layer, the base64 DER ECDSA signature
/// over it in the layer's annotation. `tamper` changes the payload after signing (its digest
/// then matches the changed bytes, the signature does not). With `subject`, the manifest names
/// it (the referrers API's form).
pub fn cosign_signature(
    digest: &str,
    key: &p256::ecdsa::SigningKey,
    tamper: bool,
    subject: Option<&TestImage>,
) -> TestImage {
    use base64::Engine;
    use p256::ecdsa::signature::Signer;
    let payload = |identity: &str| {
        serde_json::to_vec(&json!({
            "critical": {
                "identity": {"docker-reference": identity},
                "image": {"docker-manifest-digest": digest},
                "type": "cosign container image signature"
            },
            "optional": null
        }))
        .unwrap()
    };
    let signed = payload("registry.example/app");
    let signature: p256::ecdsa::Signature = key.sign(&signed);
    let encoded = base64::engine::general_purpose::STANDARD.encode(signature.to_der().as_bytes());
    let stored = if tamper {
        payload("registry.example/other")
    } else {
        signed
    };
    signed_artifact(
        subject,
        "application/vnd.dev.cosign.artifact.sig.v1+json",
        "application/vnd.dev.cosign.simplesigning.v1+json",
        &stored,
        &encoded,
    )
}

/// A Sigstore bundle attached to `subject` as cosign 3 attaches it (cosign's bundle
/// specification): an OCI 1.1 artifact of type `application/vnd.dev.sigstore.bundle.v0.3+json`
/// whose one layer is the bundle, naming its subject.
pub fn sigstore_bundle_referrer(subject: &TestImage, bundle: &[u8]) -> TestImage {
    const BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
    artifact_manifest(
        Some(subject),
        BUNDLE,
        (BUNDLE, bundle, None),
        json!({
            "dev.sigstore.bundle.content": "dsse-envelope",
            "dev.sigstore.bundle.predicateType": crate::sigstore::COSIGN_SIGN_PREDICATE,
            "org.opencontainers.image.created": "2026-12-01T00:00:00Z"
        }),
    )
}

/// A signing key from a seed (tests make their own keys), and its public key as PEM.
pub fn signing_key(seed: u64) -> (p256::ecdsa::SigningKey, String) {
    use p256::pkcs8::EncodePublicKey;
    let key = p256::ecdsa::SigningKey::from_slice(&pseudo_random(seed, 32)).unwrap();
    let pem = key
        .verifying_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    (key, pem)
}

fn signed_artifact(
    subject: Option<&TestImage>,
    artifact_type: &str,
    layer_type: &str,
    payload: &[u8],
    signature: &str,
) -> TestImage {
    artifact_manifest(
        subject,
        artifact_type,
        (
            layer_type,
            payload,
            Some(json!({"dev.cosignproject.cosign/signature": signature})),
        ),
        json!({"org.opencontainers.image.created": "2026-11-22T00:00:00Z"}),
    )
}

/// An OCI 1.1 artifact: an empty config, one layer (media type, content, annotations), the
/// manifest's annotations, and its subject if any.
fn artifact_manifest(
    subject: Option<&TestImage>,
    artifact_type: &str,
    (layer_type, payload, layer_annotations): (&str, &[u8], Option<serde_json::Value>),
    annotations: serde_json::Value,
) -> TestImage {
    let config = Blob::from_bytes(Bytes::from_static(b"{}"));
    let layer = Blob::from_bytes(Bytes::copy_from_slice(payload));
    let mut descriptor =
        json!({"mediaType": layer_type, "size": payload.len(), "digest": layer.digest});
    if let Some(layer_annotations) = layer_annotations {
        descriptor["annotations"] = layer_annotations;
    }
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "artifactType": artifact_type,
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "size": 2, "digest": config.digest},
        "layers": [descriptor],
        "annotations": annotations,
    });
    if let Some(subject) = subject {
        manifest["subject"] = json!({"mediaType": subject.media_type, "size": subject.manifest.len(), "digest": subject.digest});
    }
    let bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    TestImage {
        digest: sha256(&bytes),
        manifest: bytes,
        media_type: OCI_MANIFEST.to_string(),
        blobs: vec![config, layer],
        children: Vec::new(),
    }
}

/// An OCI artifact as its tool pushes it: an image manifest with `artifact_type` (if any), a
/// config of `config_type` holding `config`, and `layers` (media type, content), possibly none.
pub fn oci_artifact(
    artifact_type: Option<&str>,
    (config_type, config): (&str, &[u8]),
    layers: &[(&str, &[u8])],
) -> TestImage {
    let config_blob = Blob::from_bytes(Bytes::copy_from_slice(config));
    let mut blobs = vec![config_blob.clone()];
    let mut descriptors = Vec::new();
    for (media_type, content) in layers {
        let blob = Blob::from_bytes(Bytes::copy_from_slice(content));
        descriptors
            .push(json!({"mediaType": media_type, "size": content.len(), "digest": blob.digest}));
        if !blobs.iter().any(|b| b.digest == blob.digest) {
            blobs.push(blob);
        }
    }
    let mut manifest = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": config_type, "size": config.len(), "digest": config_blob.digest},
        "layers": descriptors,
    });
    if let Some(artifact_type) = artifact_type {
        manifest["artifactType"] = json!(artifact_type);
    }
    let bytes = Bytes::from(serde_json::to_vec(&manifest).unwrap());
    TestImage {
        digest: sha256(&bytes),
        manifest: bytes,
        media_type: OCI_MANIFEST.to_string(),
        blobs,
        children: Vec::new(),
    }
}

/// The referrers fallback index a client writes under the `sha256-<hex>` tag of a subject when
/// the registry has no referrers API: one descriptor (with `artifactType`) per referrer.
pub fn referrers_index(referrers: Vec<(TestImage, &str)>) -> TestImage {
    let manifests: Vec<_> = referrers
        .iter()
        .map(|(r, artifact_type)| {
            json!({"mediaType": r.media_type, "size": r.manifest.len(), "digest": r.digest,
                   "artifactType": artifact_type})
        })
        .collect();
    oci_index(manifests, referrers.into_iter().map(|(r, _)| r).collect())
}

/// Pushes images over raw HTTP (monolithic blob uploads), independent of the code under test.
pub struct Pusher {
    http: reqwest::Client,
    host: String,
    auth: Option<(String, String)>,
}

impl Pusher {
    /// A pusher for `127.0.0.1:PORT`, with Basic credentials if the registry needs them.
    pub fn new(host: &str, auth: Option<(String, String)>) -> Self {
        Pusher {
            http: reqwest::Client::new(),
            host: host.to_string(),
            auth,
        }
    }

    fn req(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let rb = self.http.request(method, url);
        match &self.auth {
            Some((u, p)) => rb.basic_auth(u, Some(p)),
            None => rb,
        }
    }

    /// Pushes a blob unless present.
    pub async fn push_blob(&self, repo: &str, blob: &Blob) {
        let url = format!("http://{}/v2/{repo}/blobs/{}", self.host, blob.digest);
        if self
            .req(reqwest::Method::HEAD, &url)
            .send()
            .await
            .unwrap()
            .status()
            == 200
        {
            return;
        }
        let resp = self
            .req(
                reqwest::Method::POST,
                &format!("http://{}/v2/{repo}/blobs/uploads/", self.host),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 202, "POST upload");
        let location = resp.headers()["location"].to_str().unwrap().to_string();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("http://{}{location}", self.host)
        };
        let sep = if location.contains('?') { '&' } else { '?' };
        let resp = self
            .req(
                reqwest::Method::PUT,
                &format!("{location}{sep}digest={}", blob.digest),
            )
            .header("content-length", blob.data.size())
            .header("content-type", "application/octet-stream")
            .body(reqwest::Body::wrap_stream(blob.data.stream()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            201,
            "PUT blob {}: {}",
            blob.digest,
            resp.text().await.unwrap()
        );
    }

    /// Pushes a manifest's blobs, its children (by digest) and itself under `reference`.
    pub async fn push(&self, repo: &str, reference: &str, image: &TestImage) {
        for child in &image.children {
            Box::pin(self.push(repo, &child.digest, child)).await;
        }
        let pushes = image.blobs.iter().map(|b| self.push_blob(repo, b));
        futures::stream::iter(pushes)
            .buffer_unordered(4)
            .collect::<Vec<_>>()
            .await;
        let url = format!("http://{}/v2/{repo}/manifests/{reference}", self.host);
        let mut resp;
        let mut throttled = 0;
        loop {
            resp = self
                .req(reqwest::Method::PUT, &url)
                .header("content-type", &image.media_type)
                .body(image.manifest.clone())
                .send()
                .await
                .unwrap();
            // ECR's PutImage rate limit (the ECR data plane profile) answers 429: wait.
            if resp.status() != 429 || throttled == 50 {
                break;
            }
            throttled += 1;
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        assert_eq!(
            resp.status(),
            201,
            "PUT manifest: {}",
            resp.text().await.unwrap()
        );
    }

    /// Raw manifest bytes for a reference, or None on 404.
    pub async fn manifest(&self, repo: &str, reference: &str) -> Option<Bytes> {
        let resp = self
            .req(reqwest::Method::GET, &format!("http://{}/v2/{repo}/manifests/{reference}", self.host))
            .header("accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json")
            .send()
            .await
            .unwrap();
        if resp.status() != 200 {
            return None;
        }
        Some(resp.bytes().await.unwrap())
    }

    /// A small blob's bytes (a signature, a receipt), `None` on 404.
    pub async fn blob(&self, repo: &str, digest: &str) -> Option<Bytes> {
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.host);
        let resp = self.req(reqwest::Method::GET, &url).send().await.unwrap();
        if resp.status() != 200 {
            return None;
        }
        Some(resp.bytes().await.unwrap())
    }

    /// Streams a blob and returns the sha256 digest and size of the bytes served, `None` on 404.
    pub async fn blob_digest(&self, repo: &str, digest: &str) -> Option<(String, u64)> {
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.host);
        let resp = self.req(reqwest::Method::GET, &url).send().await.unwrap();
        if resp.status() != 200 {
            return None;
        }
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = resp.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.unwrap();
            size += chunk.len() as u64;
            hasher.update(&chunk);
        }
        Some((format!("sha256:{}", hex::encode(hasher.finalize())), size))
    }

    /// Whether the repository holds the blob.
    pub async fn has_blob(&self, repo: &str, digest: &str) -> bool {
        let url = format!("http://{}/v2/{repo}/blobs/{digest}", self.host);
        self.req(reqwest::Method::HEAD, &url)
            .send()
            .await
            .unwrap()
            .status()
            == 200
    }
}
