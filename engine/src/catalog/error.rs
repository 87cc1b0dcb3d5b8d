//! Why a change of the catalog was refused.

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CatalogError {
    #[error("topic {0:?} already exists")]
    Exists(String),
    #[error("topic {0:?} does not exist")]
    Unknown(String),
    #[error("invalid topic name {0:?}: {1}")]
    InvalidName(String, &'static str),
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidConfig(String),
    #[error("could not persist the catalog: {0}")]
    Storage(String),
    /// The bucket holds a catalog this broker has not seen: another broker changed topics.
    #[error("the cluster's topic catalog changed meanwhile (another controller?); try again")]
    Stale,
}
