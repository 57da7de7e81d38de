//! How the feed's first page is read, chosen by what the viewer's previous first page
//! showed.
//!
//! Two plans read the same page (`listing::followed_ids` and `listing::walked_ids`):
//!
//! - **per followed author**: a page of index entries from each, merged. About 15 µs an
//!   author here, whatever the rest of the site wrote;
//! - **a walk** down the site's newest articles, keeping the followed authors' ones. About
//!   1.5 µs a row walked, so it costs how deep in the site's articles the page ends: 50
//!   rows for a reader following 20 of 50 active authors (0.17 ms against 0.24 ms for the
//!   per-author plan, pgbench on the bench data), but 1,000 rows and more for a reader of
//!   a few authors whose articles lie behind everyone else's (0.93 ms against 0.14 ms).
//!
//! PostgreSQL 15 cannot choose between them itself: a prepared statement keeps one plan
//! for every viewer. The depth is known after the fact, though: article ids are an
//! identity assigned at insert, as `created_at` is, so about `newest id - the page's last
//! id` rows lie before the page's end (deleted articles only make it an overestimate,
//! which favours the per-author plan; rows inserted with an older `created_at` only make
//! the choice worse, never the page wrong).
//! Each first page reports the newest id and the number of followed authors along with
//! its rows; the viewer's next first page takes the walk when that depth is below
//! [`WALK_ROWS_PER_AUTHOR`] times the authors. A viewer not seen yet (or forgotten) gets
//! the per-author plan, which is never far off; the choice only ever changes the cost,
//! never the page.

use std::sync::LazyLock;

use uuid::Uuid;

/// Rows walked that cost what reading one more followed author costs (15 µs / 1.5 µs).
pub const WALK_ROWS_PER_AUTHOR: i64 = 10;

/// Viewers remembered (about 40 bytes each: under 1 MiB in all).
const REMEMBERED: usize = 16_384;

/// What a viewer's last first page showed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// Rows a walk would have read to the page's end (`i64::MAX` when the page was not
    /// full: the walk would have read every article).
    pub depth: i64,
    /// Authors the viewer follows.
    pub authors: i64,
}

impl Shape {
    /// From a first page's report: the site's newest article id, the followed authors, and
    /// the page's last id if the page was full.
    pub fn of(newest_id: i64, authors: i64, last_of_full_page: Option<i64>) -> Shape {
        Shape {
            depth: last_of_full_page.map_or(i64::MAX, |last| newest_id.saturating_sub(last) + 1),
            authors,
        }
    }

    pub fn walk(self) -> bool {
        self.depth <= WALK_ROWS_PER_AUTHOR.saturating_mul(self.authors)
    }
}

static SEEN: LazyLock<quick_cache::sync::Cache<Uuid, Shape>> =
    LazyLock::new(|| quick_cache::sync::Cache::new(REMEMBERED));

/// Whether `viewer`'s next first page takes the walk.
pub fn walk(viewer: Uuid) -> bool {
    SEEN.get(&viewer).is_some_and(Shape::walk)
}

/// Remembers what `viewer`'s first page showed.
pub fn learn(viewer: Uuid, shape: Shape) {
    SEEN.insert(viewer, shape);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_walk_is_taken_only_where_it_is_cheaper_and_a_short_page_never_walks() {
        // 20 authors, the page's end 50 articles deep: walk.
        assert!(Shape::of(1450, 20, Some(1401)).walk());
        // 3 authors whose page ends behind 1,000 newer articles: per author.
        assert!(!Shape::of(1450, 3, Some(420)).walk());
        // A page that was not full: the walk would read every article.
        assert!(!Shape::of(1450, 20, None).walk());
        // A viewer not seen yet reads per author.
        assert!(!walk(Uuid::new_v4()));
        let viewer = Uuid::new_v4();
        learn(viewer, Shape::of(1450, 20, Some(1401)));
        assert!(walk(viewer));
        learn(viewer, Shape::of(1450, 20, None));
        assert!(!walk(viewer));
    }
}
