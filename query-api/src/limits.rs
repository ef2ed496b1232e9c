//! The read tier's budgets (`platform::limits`), per user: reads that touch one room or
//! document are cheap, history pages and downloads less so, a search scans an index.

use crate::error::QueryError;

platform::budgets! {
    pub struct Budgets / Limits {
        /// Room lists, details, members, presence and unread counts.
        reads: 20.0, 100;
        /// History pages.
        history: 20.0, 60;
        /// Searches.
        search: 2.0, 20;
        /// File downloads.
        downloads: 5.0, 50;
    }
}

impl From<platform::limits::Exhausted> for QueryError {
    fn from(e: platform::limits::Exhausted) -> Self {
        QueryError::RateLimited {
            retry_after: e.retry_after,
        }
    }
}
