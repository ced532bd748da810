//! The tasks (MCP Tasks extension, SEP-2663 `io.modelcontextprotocol/tasks`) a gateway handed
//! out: which server each belongs to, under which id there, and the gate's `_meta` of the
//! `tools/call` that created it (its receipt ids, added to the task's final result).
//!
//! With one server behind one client (stdio, an HTTP session), a task keeps the server's id
//! (pass-through). With several servers, or when clients share the gateway (the HTTP front's
//! 2026-07-28 clients), the client is given an id the gateway makes, `<server>__<32 random hex
//! digits>`, and only the ids in this table reach a server: a client cannot name another
//! server's task, or another client's, by guessing or by reusing an id a server gave (two
//! servers may well both have a task `1`), and a `tasks/get` of an id the gateway never gave out
//! is refused without asking any server. Whoever holds a handed-out id reaches its task: the id
//! is the capability (128 random bits), as the HTTP front does not tell its clients apart.
//!
//! Bounded: at most [`MAX_TASKS`] per gateway, the oldest forgotten first (a client that
//! starts more tasks than that loses the handle of its oldest, which the gateway then refuses as
//! unknown — it never guesses where to send it).

use std::collections::{HashMap, VecDeque};

use serde_json::{Map, Value};

/// Tasks remembered per gateway (a client session's, or the one the HTTP front's 2026-07-28
/// clients share: entries of a few hundred bytes, about a megabyte at most).
pub const MAX_TASKS: usize = 4096;

/// One task handed to the client.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// Index of its server among the session's servers.
    pub link: usize,
    /// Its id on that server.
    pub downstream: String,
    /// The gate's `_meta` of the call that created it.
    pub meta: Map<String, Value>,
}

#[derive(Debug, Default)]
pub struct Tasks {
    by_id: HashMap<String, Task>,
    order: VecDeque<String>,
}

/// 128 random bits as hex: a task id the client cannot guess.
fn random_hex() -> Option<String> {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).ok()?;
    Some(hex::encode(b))
}

impl Tasks {
    /// Records a task `downstream` of server `link` (named `server`) and returns the id the
    /// client is given: one made here (`mint`) or the server's own. `None` if no random id
    /// could be made (the task is then not handed out).
    pub fn add(&mut self, mint: bool, server: &str, task: Task) -> Option<String> {
        let id = if mint {
            format!("{server}{}{}", crate::proxy::SEPARATOR, random_hex()?)
        } else {
            task.downstream.clone()
        };
        if self.by_id.insert(id.clone(), task).is_none() {
            self.order.push_back(id.clone());
        }
        while self.order.len() > MAX_TASKS {
            if let Some(oldest) = self.order.pop_front() {
                self.by_id.remove(&oldest);
            }
        }
        Some(id)
    }

    pub fn get(&self, id: &str) -> Option<&Task> {
        self.by_id.get(id)
    }

    /// The id the client knows task `downstream` of server `link` by.
    pub fn client_id(&self, link: usize, downstream: &str) -> Option<String> {
        self.by_id.iter().find(|(_, t)| t.link == link && t.downstream == downstream).map(|(id, _)| id.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn task(link: usize, downstream: &str) -> Task {
        Task { link, downstream: downstream.into(), meta: Map::new() }
    }

    #[test]
    fn with_several_servers_each_task_gets_an_unguessable_id_of_its_own() {
        let mut tasks = Tasks::default();
        let a = tasks.add(true, "crm", task(0, "1")).unwrap();
        let b = tasks.add(true, "billing", task(1, "1")).unwrap();
        assert!(a.starts_with("crm__") && b.starts_with("billing__") && a.len() == "crm__".len() + 32, "{a} {b}");
        assert_eq!(tasks.get(&a), Some(&task(0, "1")));
        assert_eq!(tasks.get(&b), Some(&task(1, "1")));
        // The server's own id, or another server's prefix with it, names nothing.
        assert!(tasks.get("1").is_none() && tasks.get("billing__1").is_none());
        assert_eq!(tasks.client_id(1, "1"), Some(b));
        assert_eq!(tasks.client_id(2, "1"), None);
    }

    #[test]
    fn with_one_server_the_id_is_the_servers() {
        let mut tasks = Tasks::default();
        assert_eq!(tasks.add(false, "shop", task(0, "t-7")).as_deref(), Some("t-7"));
        assert_eq!(tasks.get("t-7").map(|t| t.link), Some(0));
    }

    #[test]
    fn the_oldest_is_forgotten_past_the_bound() {
        let mut tasks = Tasks::default();
        for i in 0..=MAX_TASKS {
            tasks.add(false, "shop", task(0, &i.to_string())).unwrap();
        }
        assert!(tasks.get("0").is_none());
        assert!(tasks.get("1").is_some() && tasks.get(&MAX_TASKS.to_string()).is_some());
        assert_eq!(tasks.by_id.len(), MAX_TASKS);
    }
}
