//! Splitting an image's blobs into ranges that each fit one copy invocation's byte budget.

use oci::BlobRef;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// One unit of copy work: several whole blobs, or one blob too large for the budget, copied in
/// segments by successive calls that continue the same upload session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", tag = "kind")]
pub enum CopyRange {
    /// Whole blobs whose sizes add up to at most the budget.
    Blobs {
        /// The blobs.
        #[schemars(with = "Vec<BlobSchema>")]
        blobs: Vec<BlobRef>,
    },
    /// One blob copied `segments` budget-sized pieces at a time.
    Segments {
        /// The blob.
        #[schemars(with = "BlobSchema")]
        blob: BlobRef,
        /// How many calls it takes.
        segments: u64,
    },
}

/// JSON shape of a blob reference.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct BlobSchema {
    digest: String,
    size: u64,
}

impl CopyRange {
    /// The range's blobs.
    pub fn blobs(&self) -> Vec<BlobRef> {
        match self {
            CopyRange::Blobs { blobs } => blobs.clone(),
            CopyRange::Segments { blob, .. } => vec![blob.clone()],
        }
    }

    /// Bytes this range moves.
    pub fn bytes(&self) -> u64 {
        match self {
            CopyRange::Blobs { blobs } => blobs.iter().map(|b| b.size).sum(),
            CopyRange::Segments { blob, .. } => blob.size,
        }
    }
}

/// Groups blobs into ranges of at most `budget` bytes (first-fit, largest first); a blob larger
/// than the budget becomes a `Segments` range of `ceil(size / budget)` segments.
pub fn split_into_ranges(blobs: &[BlobRef], budget: u64) -> Vec<CopyRange> {
    let budget = budget.max(1);
    let mut sorted: Vec<&BlobRef> = blobs.iter().collect();
    sorted.sort_by(|a, b| b.size.cmp(&a.size).then_with(|| a.digest.cmp(&b.digest)));
    let mut ranges: Vec<CopyRange> = Vec::new();
    let mut groups: Vec<(u64, Vec<BlobRef>)> = Vec::new();
    for blob in sorted {
        if blob.size > budget {
            ranges.push(CopyRange::Segments {
                blob: blob.clone(),
                segments: blob.size.div_ceil(budget),
            });
            continue;
        }
        match groups
            .iter_mut()
            .find(|(used, _)| used + blob.size <= budget)
        {
            Some((used, group)) => {
                *used += blob.size;
                group.push(blob.clone());
            }
            None => groups.push((blob.size, vec![blob.clone()])),
        }
    }
    ranges.extend(
        groups
            .into_iter()
            .map(|(_, blobs)| CopyRange::Blobs { blobs }),
    );
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci::Digest;

    const GIB: u64 = 1 << 30;

    fn blob(n: u8, size: u64) -> BlobRef {
        BlobRef {
            digest: Digest::of(&[n]),
            size,
        }
    }

    #[test]
    fn a_5_gib_layer_with_a_2_gib_budget_takes_3_segments() {
        let ranges = split_into_ranges(&[blob(1, 5 * GIB), blob(2, 1000)], 2 * GIB);
        assert_eq!(ranges.len(), 2);
        assert!(
            matches!(&ranges[0], CopyRange::Segments { segments: 3, blob } if blob.size == 5 * GIB)
        );
        assert!(matches!(&ranges[1], CopyRange::Blobs { blobs } if blobs.len() == 1));
    }

    #[test]
    fn small_blobs_share_ranges_under_the_budget() {
        let blobs: Vec<BlobRef> = (0..10).map(|i| blob(i, 300)).collect();
        let ranges = split_into_ranges(&blobs, 1000);
        assert_eq!(ranges.len(), 4); // 3 + 3 + 3 + 1
        assert!(ranges.iter().all(|r| r.bytes() <= 1000));
        assert_eq!(ranges.iter().map(CopyRange::bytes).sum::<u64>(), 3000);
    }

    #[test]
    fn a_blob_exactly_the_budget_is_whole_and_nothing_is_empty() {
        let ranges = split_into_ranges(&[blob(1, 2 * GIB)], 2 * GIB);
        assert!(matches!(&ranges[0], CopyRange::Blobs { blobs } if blobs.len() == 1));
        assert!(split_into_ranges(&[], GIB).is_empty());
    }
}
