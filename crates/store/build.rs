//! Rebuilds the crate when a migration is added or edited: `sqlx::migrate!` embeds the SQL files
//! at compile time and, on stable Rust, cannot track the directories itself.

fn main() {
    println!("cargo:rerun-if-changed=../../migrations/postgres");
    println!("cargo:rerun-if-changed=../../migrations/sqlite");
}
