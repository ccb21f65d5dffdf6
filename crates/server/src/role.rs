//! The roles of the distributed mode, known to every build so the command
//! line can name them (running one needs the `distributed` feature).

/// A process's part in the distributed deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Presence,
    Message,
    Conversation,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Presence => "presence",
            Self::Message => "message",
            Self::Conversation => "conversation",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
