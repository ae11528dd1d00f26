//! The tag scheme's names for an image's artifacts: `sha256-<hex>` for the referrers fallback
//! index, with `.sig`, `.att` and `.sbom` as cosign writes them. Names only: below everything
//! that reads or copies artifacts (`artifacts`, `layout_referrers`).

/// Suffixes cosign puts after the fallback tag.
const COSIGN_SUFFIXES: [&str; 3] = [".sig", ".att", ".sbom"];

/// The fallback tag of a digest: `sha256:<hex>` becomes `sha256-<hex>`.
pub fn fallback_tag(digest: &str) -> String {
    digest.replacen(':', "-", 1)
}

/// The tags that hold artifacts of `digest` under the tag scheme.
pub fn artifact_tags(digest: &str) -> Vec<String> {
    let base = fallback_tag(digest);
    std::iter::once(base.clone())
        .chain(COSIGN_SUFFIXES.iter().map(|s| format!("{base}{s}")))
        .collect()
}

/// The subject digest an artifact tag names (`sha256-<hex>`, with an optional cosign suffix),
/// if it is one.
pub(crate) fn artifact_subject(tag: &str) -> Option<String> {
    let rest = tag.strip_prefix("sha256-")?;
    let hex = COSIGN_SUFFIXES
        .iter()
        .find_map(|suffix| rest.strip_suffix(suffix))
        .unwrap_or(rest);
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then(|| format!("sha256:{hex}"))
}
