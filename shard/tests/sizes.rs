//! The sizes that decide memory per idle connection (print them with --nocapture), with a
//! budget on the per-connection task state.
use std::cell::RefCell;
use std::rc::Rc;

#[test]
fn print_sizes() {
    let handle = glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .spawn(|| async move {
            let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let client = glommio::net::TcpStream::connect(addr).await.unwrap();
            let ctx = Rc::new(ringmq_shard::runtime::ShardCtx {
                state: RefCell::new(ringmq_shard::state::ShardState::new(
                    0,
                    1,
                    Default::default(),
                    Default::default(),
                )),
                read_scratch: RefCell::new(vec![0u8; 16 * 1024].into_boxed_slice()),
                read_buf: RefCell::new(bytes::BytesMut::new()),
                write_buf: RefCell::new(bytes::BytesMut::new()),
                bridge: None,
                park: None,
            });
            let fut = ringmq_shard::connection::serve(ctx, client, bytes::Bytes::new(), false);
            println!("serve future: {} bytes", std::mem::size_of_val(&fut));
            // A memory budget, not a timing: the task state every connection keeps until it
            // parks. The handshake and close run boxed to keep it small (it was 5.2 KB before).
            assert!(
                std::mem::size_of_val(&fut) <= 320,
                "connection task state grew to {} bytes; idle connections pay it each",
                std::mem::size_of_val(&fut)
            );
            println!(
                "TcpStream: {} bytes",
                std::mem::size_of::<glommio::net::TcpStream>()
            );
            println!(
                "Session: {} bytes",
                std::mem::size_of::<ringmq_shard::session::Session>()
            );
            println!(
                "FilterEntry: {} bytes",
                std::mem::size_of::<ringmq_shard::state::FilterEntry>()
            );
            println!(
                "RouteEntry: {} bytes",
                std::mem::size_of::<ringmq_shard::state::RouteEntry>()
            );
        })
        .unwrap();
    handle.join().unwrap();
}
