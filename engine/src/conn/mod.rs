//! Client connections: admission against the broker's limits and the log-line budget
//! (`admission`), and the loop that reads, handles and answers requests (`serve`).

pub mod admission;
pub mod serve;
