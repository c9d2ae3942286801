//! One module per subcommand of `certsync-receive` (docs/contract.md
//! "`certsync-receive`"). Each turns settings and flags into a report or an exit
//! code; the work itself is the [`crate::pipeline`]'s.

pub mod authorized_key;
pub mod check;
pub mod deploy;
pub mod install;
pub mod serve;
pub mod units;
