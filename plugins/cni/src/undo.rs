//! Transactional ADD (docs/architecture.md, design decisions): every step that changes something registers how to undo
//! it; on any failure the steps are undone in reverse order. Undo keeps going past errors and reports them on stderr,
//! because the error the caller returns is the one that made ADD fail.

use crate::error::Result;

type Step<'a> = (String, Box<dyn FnOnce() -> Result<()> + 'a>);

#[derive(Default)]
pub struct Undo<'a> {
    steps: Vec<Step<'a>>,
}

impl<'a> Undo<'a> {
    pub fn new() -> Self {
        Undo { steps: Vec::new() }
    }

    pub fn push(&mut self, what: impl Into<String>, f: impl FnOnce() -> Result<()> + 'a) {
        self.steps.push((what.into(), Box::new(f)));
    }

    /// The transaction succeeded: forget the undo steps.
    pub fn commit(mut self) {
        self.steps.clear();
    }

    /// Undo now, in reverse order; returns the messages of the steps that failed.
    pub fn rollback(mut self) -> Vec<String> {
        self.run()
    }

    fn run(&mut self) -> Vec<String> {
        let mut failures = Vec::new();
        while let Some((what, f)) = self.steps.pop() {
            if let Err(e) = f() {
                eprintln!("rollback: {what}: {e}");
                failures.push(format!("{what}: {e}"));
            }
        }
        failures
    }
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        self.run();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::cell::RefCell;

    #[test]
    fn undo_runs_in_reverse_and_continues_past_errors() {
        let log = RefCell::new(Vec::new());
        {
            let mut u = Undo::new();
            u.push("a", || {
                log.borrow_mut().push("a");
                Ok(())
            });
            u.push("b", || Err(Error::failed("boom")));
            u.push("c", || {
                log.borrow_mut().push("c");
                Ok(())
            });
        }
        assert_eq!(*log.borrow(), vec!["c", "a"]);
    }

    #[test]
    fn commit_forgets_steps() {
        let log = RefCell::new(0);
        let mut u = Undo::new();
        u.push("a", || {
            *log.borrow_mut() += 1;
            Ok(())
        });
        u.commit();
        assert_eq!(*log.borrow(), 0);
    }
}
