//! The sizes that decide memory per idle connection (print them with --nocapture), with a budget
//! on the engine's per-connection state. A memory budget, not a timing.

#[test]
fn print_sizes() {
    let conn = std::mem::size_of::<engine::conn::Conn>();
    let session = std::mem::size_of::<engine::session::Session>();
    println!("engine Conn: {conn} bytes (boxed, one per connection)");
    println!("Session: {session} bytes (boxed, one per session)");
    println!("ring connection record: {} bytes", uring::CONN_SIZE_BYTES);
    println!(
        "FilterEntry: {} bytes",
        std::mem::size_of::<engine::state::FilterEntry>()
    );
    println!(
        "RouteEntry: {} bytes",
        std::mem::size_of::<engine::state::RouteEntry>()
    );
    assert!(
        conn <= 192,
        "the engine's per-connection state grew to {conn} bytes; every idle connection pays it"
    );
}
