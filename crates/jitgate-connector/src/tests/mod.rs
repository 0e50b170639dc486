//! The connector over the fake EC2: plans carried out and checked against what EC2 then holds,
//! and the loop against a fake server.

mod enforce;
mod looped;
mod world;
