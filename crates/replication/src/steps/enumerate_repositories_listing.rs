//! `enumerate-repositories`' reading of the source's catalog: the next batch of selected names
//! of a listing page, and where the listing goes on (the step's token).

use crate::error::{Error, Result};
use crate::job::ValidJob;

/// The next batch of at most `room` names the job's globs select from `names` (the rest of a
/// listing page), and how many names it read; a name that is not a repository name is refused
/// (logged, and kept in `refused` up to `ENSURE_LISTED`) and never reaches a URL.
pub(super) fn next_batch(
    job: &ValidJob,
    names: &[String],
    room: usize,
    refused: &mut Vec<String>,
) -> (Vec<String>, usize) {
    let mut batch = Vec::new();
    let mut read = 0;
    for name in names {
        if batch.len() >= room {
            break;
        }
        read += 1;
        if let Err(reason) = oci::reference::validate_repository_name(name) {
            tracing::warn!(repository = %name.escape_debug(), %reason, "refused a name from the source's catalog");
            if refused.len() < crate::report::ENSURE_LISTED {
                let refusal = crate::filter::Refusal::new(name, reason);
                refused.push(format!("{}: {}", refusal.name, refusal.reason));
            }
            continue;
        }
        if job.repositories.matches(name) {
            batch.push(name.clone());
        }
    }
    (batch, read)
}

/// Where a repository listing goes on: the registry's page token (none: the first page) and how
/// many names of that page were already read. As a step token: `<offset>:<registry token>`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct ListingPosition {
    /// Names of the registry's page already read.
    pub(super) offset: usize,
    /// The registry's page token (none: the first page).
    pub(super) registry_token: Option<String>,
}

impl ListingPosition {
    pub(super) fn parse(token: Option<&str>) -> Result<Self> {
        let Some(token) = token else {
            return Ok(ListingPosition::default());
        };
        let invalid = || {
            Error::invalid(
                "nextToken",
                format!(
                    "{:?} is not a token enumerate-repositories gave",
                    crate::report::truncate_chars(token, 80)
                ),
            )
        };
        let (offset, registry_token) = token.split_once(':').ok_or_else(invalid)?;
        let offset = offset.parse::<usize>().map_err(|_| invalid())?;
        // A registry may answer more than it was asked for (moto pages nothing), never this many.
        if offset > 1_000_000 {
            return Err(invalid());
        }
        Ok(ListingPosition {
            offset,
            registry_token: (!registry_token.is_empty()).then(|| registry_token.to_string()),
        })
    }

    pub(super) fn token(&self) -> String {
        format!(
            "{}:{}",
            self.offset,
            self.registry_token.as_deref().unwrap_or_default()
        )
    }
}
