//! One finding of `ringtail tune check`: what it is, what is recommended, and what `apply`
//! would write.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// As recommended.
    Ok,
    /// A change is recommended.
    Advise,
    /// Facts to act on by judgement (no single right value).
    Info,
    /// Could not be read here.
    Unknown,
}

/// A value `apply` may write: a sysctl or sysfs file under the root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Write {
    pub path: String,
    pub value: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub area: &'static str,
    pub name: String,
    pub current: String,
    pub recommended: String,
    pub status: Status,
    pub why: String,
    /// The command a person would run to change it.
    pub change: Option<String>,
    /// What `apply --yes` writes (only for items with status `Advise`).
    pub writes: Vec<Write>,
}

impl Item {
    pub(crate) fn new(area: &'static str, name: &str, current: impl Into<String>) -> Item {
        Item {
            area,
            name: name.into(),
            current: current.into(),
            recommended: String::new(),
            status: Status::Info,
            why: String::new(),
            change: None,
            writes: Vec::new(),
        }
    }
    pub(crate) fn want(mut self, recommended: impl Into<String>, ok: bool, why: &str) -> Item {
        self.recommended = recommended.into();
        self.status = if ok { Status::Ok } else { Status::Advise };
        self.why = why.into();
        self
    }
    pub(crate) fn info(mut self, recommended: impl Into<String>, why: &str) -> Item {
        self.recommended = recommended.into();
        self.status = Status::Info;
        self.why = why.into();
        self
    }
    pub(crate) fn unknown(mut self, why: &str) -> Item {
        self.status = Status::Unknown;
        self.why = why.into();
        self
    }
    /// A sysctl/sysfs file to write when advised.
    pub(crate) fn writing(mut self, path: &str, value: &str, command: String) -> Item {
        if self.status == Status::Advise {
            self.writes.push(Write {
                path: path.into(),
                value: value.into(),
            });
        }
        self.change = Some(command);
        self
    }
}
