use super::*;

fn header() -> Header {
    Header {
        format: FORMAT.into(),
        version: VERSION,
        source: "sqlite".into(),
        schema: 6,
        exported: "2026-01-01T00:00:00Z".into(),
    }
}

fn principal(id: i64) -> Record {
    Record::Principal(Principal {
        id,
        name: format!("p{id}"),
        kind: "User".into(),
        created: 1_700_000_000_123_456_789,
        issuer: None,
        subject: Some("s".into()),
        display_name: None,
    })
}

fn written(records: &[Record]) -> String {
    let mut sink = JsonLinesSink::new(Vec::new(), &header()).expect("header");
    for r in records {
        sink.put(r.clone()).expect("put");
    }
    String::from_utf8(sink.finish().expect("finish")).expect("utf-8")
}

fn read(text: &str) -> StoreResult<Vec<Record>> {
    JsonLinesSource::new(text.as_bytes())?.collect()
}

#[test]
fn records_round_trip_through_json_lines_with_a_header_and_an_end_line() {
    let records = vec![
        principal(1),
        principal(7),
        Record::Sequence(Sequence { table: "deliveries".into(), last: 12 }),
        Record::Meta(Meta { key: "revision".into(), value: 41 }),
    ];
    let text = written(&records);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), records.len() + 2);
    assert!(lines[0].starts_with(r#"{"format":"jitgate-export","version":1,"#), "{}", lines[0]);
    assert!(lines[1].starts_with(r#"{"record":"principal","id":1,"#), "{}", lines[1]);
    assert_eq!(lines[3], r#"{"record":"sequence","table":"deliveries","last":12}"#);
    assert_eq!(lines[5], r#"{"record":"end","records":4}"#);
    let source = JsonLinesSource::new(text.as_bytes()).expect("header");
    assert_eq!(source.header(), &header());
    assert_eq!(read(&text).expect("read"), records);
}

#[test]
fn a_cut_off_or_padded_or_foreign_file_is_refused() {
    let text = written(&[principal(1), principal(2)]);
    let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    let err = read(&cut).expect_err("cut off");
    assert!(err.to_string().contains("cut off"), "{err}");
    let wrong_count = text.replace(r#""records":2"#, r#""records":3"#);
    assert!(read(&wrong_count).expect_err("count").to_string().contains("counts 3 records"));
    let padded = format!("{text}{}\n", serde_json::to_string(&principal(3)).expect("json"));
    assert!(read(&padded).expect_err("after end").to_string().contains("after the end line"));
    let bad_line = text.replace(r#""record":"principal","id":2"#, r#""record":"principal","id":"two""#);
    assert!(read(&bad_line).expect_err("bad").to_string().contains("line 3"));
    assert!(JsonLinesSource::new(
        &b"{\"format\":\"other\",\"version\":1,\"source\":\"x\",\"schema\":1,\"exported\":\"\"}\n"[..]
    )
    .is_err());
    assert!(JsonLinesSource::new(&b"hello\n"[..]).is_err());
    let empty = JsonLinesSource::new(&b""[..]).err().map(|e| e.to_string()).unwrap_or_default();
    assert!(empty.contains("the input is empty"), "{empty}");
    // A field this build does not know (a newer jitgate's column) is refused, never dropped.
    let extra = text.replace(r#""record":"principal","id":2,"#, r#""record":"principal","id":2,"colour":"red","#);
    assert!(read(&extra).expect_err("unknown field").to_string().contains("colour"));
    let unknown_kind = text.replace(r#""record":"principal","id":2,"#, r#""record":"gadget","id":2,"#);
    assert!(read(&unknown_kind).is_err());
    let newer = text.replacen(r#""version":1"#, r#""version":2"#, 1);
    assert!(JsonLinesSource::new(newer.as_bytes()).is_err());
}

#[test]
fn a_failed_source_yields_one_error_and_then_nothing() {
    let text = written(&[principal(1)]);
    let cut: String = text.lines().take(2).map(|l| format!("{l}\n")).collect();
    let mut source = JsonLinesSource::new(cut.as_bytes()).expect("header");
    assert!(matches!(source.next(), Some(Ok(_))));
    assert!(matches!(source.next(), Some(Err(_))));
    assert!(source.next().is_none());
}

#[test]
fn every_table_maps_rows_to_records_and_back() {
    for table in TABLES {
        assert!(!table.key.is_empty());
        for k in table.key {
            assert!(table.column(k).is_some(), "{}: key {k} is a column", table.name);
        }
        let row: Vec<Value> = table
            .columns
            .iter()
            .map(|c| match (c.nullable, c.ty) {
                (true, _) => Value::Null,
                (false, ColumnType::Int) => Value::Int(3),
                (false, ColumnType::Bool) => Value::Bool(true),
                (false, ColumnType::Text) => Value::Text("x".into()),
            })
            .collect();
        let record = (table.from_row)(row.clone()).expect("a row of the right types");
        assert_eq!(record.table().map(|t| t.name), Some(table.name));
        assert_eq!(record.kind(), table.kind);
        assert_eq!(record.values(), row, "{}", table.name);
        let mut wrong = row;
        wrong[0] = Value::Bool(false);
        assert!((table.from_row)(wrong).is_err(), "{}: a value of the wrong type is refused", table.name);
    }
    let names: std::collections::BTreeSet<&str> = TABLES.iter().map(|t| t.kind).collect();
    assert_eq!(names.len(), TABLES.len(), "kinds are unique");
}

#[test]
fn counts_say_how_many_of_each_kind() {
    let mut c = Counts::default();
    for r in [principal(1), principal(2), Record::Meta(Meta { key: "revision".into(), value: 1 })] {
        c.add(&r);
    }
    assert_eq!(c.total(), 3);
    assert_eq!(c.to_string(), "3 records (meta 1, principal 2)");
}
