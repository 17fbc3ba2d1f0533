//! Where a build's SOURCE_DATE_EPOCH (every time stamp in the image, and
//! the date a reviewer reads) comes from, first match wins: the
//! SOURCE_DATE_EPOCH environment variable, the recipe's
//! `[image] source_date_epoch`, the lock (`cairn lock` records when it
//! resolved the inputs), else a fixed default. Invariant: the same recipe,
//! lock and environment give the same value; the clock is read only by
//! `cairn lock`, and only when nothing else sets the date.

use serde::{Deserialize, Serialize};

use super::Recipe;

/// The date of a build with no lock and no setting: the declared default
/// of `[image] source_date_epoch` (2025-01-01T00:00:00Z).
pub fn default_epoch() -> u64 {
    super::settings::IMAGE_EPOCH.int()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EpochSource {
    /// The SOURCE_DATE_EPOCH environment variable of the build.
    Environment,
    /// The recipe's `[image] source_date_epoch`.
    Recipe,
    /// The lock's `source_date_epoch`: when its inputs were resolved.
    Lock,
    /// [`default_epoch`]: no lock, nothing set.
    Default,
}

impl EpochSource {
    /// For `cairn inspect`: where the date came from, in words.
    pub fn describe(self) -> &'static str {
        match self {
            EpochSource::Environment => "the SOURCE_DATE_EPOCH environment variable",
            EpochSource::Recipe => "the recipe's [image] source_date_epoch",
            EpochSource::Lock => "the lock: when `cairn lock` resolved the inputs",
            EpochSource::Default => "cairn's fixed default (no lock, nothing set)",
        }
    }
}

/// The epoch from the environment (as the caller read it) or the
/// recipe's setting, else the default.
pub fn choose(env: Option<u64>, recipe: Option<u64>) -> (u64, EpochSource) {
    if let Some(e) = env {
        return (e, EpochSource::Environment);
    }
    match recipe {
        Some(r) => (r, EpochSource::Recipe),
        None => (default_epoch(), EpochSource::Default),
    }
}

/// The recipe dated by its lock when nothing else sets the date.
pub fn dated(recipe: &Recipe, lock_epoch: Option<u64>) -> Recipe {
    let mut r = recipe.clone();
    if let (EpochSource::Default, Some(e)) = (r.source_date_epoch_from, lock_epoch) {
        r.source_date_epoch = e;
        r.source_date_epoch_from = EpochSource::Lock;
    }
    r
}

/// The epoch `cairn lock` records: the recipe's or environment's when set
/// (so a lock can be made reproducibly), else now, the resolution time.
pub fn for_lock(recipe: &Recipe) -> u64 {
    match recipe.source_date_epoch_from {
        EpochSource::Default | EpochSource::Lock => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_else(|_| default_epoch()),
        EpochSource::Environment | EpochSource::Recipe => recipe.source_date_epoch,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recipe(extra: &str) -> Recipe {
        let d = tempfile::tempdir().unwrap();
        let text = format!(
            "[image]\nname = \"t\"\nversion = \"1\"\n{extra}[base.debian]\npackages = []\n"
        );
        let path = d.path().join("r.toml");
        std::fs::write(&path, &text).unwrap();
        super::super::parse(&super::super::RecipeSource {
            path,
            text,
            root: std::fs::canonicalize(d.path()).unwrap(),
            env: Default::default(),
            merged: None,
        })
        .unwrap()
    }

    #[test]
    fn the_lock_dates_a_recipe_that_sets_nothing() {
        let r = recipe("");
        assert_eq!(r.source_date_epoch_from, EpochSource::Default);
        assert_eq!(r.source_date_epoch, default_epoch());
        let d = dated(&r, Some(1_800_000_000));
        assert_eq!(
            (d.source_date_epoch, d.source_date_epoch_from),
            (1_800_000_000, EpochSource::Lock)
        );
        assert_eq!(dated(&r, None).source_date_epoch, default_epoch());
        // `cairn lock` records the clock only when nothing sets the date.
        assert!(for_lock(&r) > default_epoch());
        // Control: the recipe's own date wins over the lock's.
        let r = recipe("source_date_epoch = 5\n");
        assert_eq!(r.source_date_epoch_from, EpochSource::Recipe);
        let d = dated(&r, Some(1_800_000_000));
        assert_eq!(
            (d.source_date_epoch, d.source_date_epoch_from),
            (5, EpochSource::Recipe)
        );
        assert_eq!(for_lock(&r), 5);
    }

    #[test]
    fn first_match_wins() {
        assert_eq!(choose(Some(7), Some(5)), (7, EpochSource::Environment));
        assert_eq!(choose(None, Some(5)), (5, EpochSource::Recipe));
        assert_eq!(choose(None, None), (default_epoch(), EpochSource::Default));
    }
}
