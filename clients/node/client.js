#!/usr/bin/env node
// A Node.js client of recsvc.v1.RedemptionService (@grpc/grpc-js + @grpc/proto-loader).
//
// The contract is loaded at run time from protos/recsvc/v1/recsvc.proto (no generated code).
// Field names are the .proto's (snake_case); int64 fields (money in minor units, points, ids)
// are decimal strings both ways, so no value is ever rounded by a JavaScript number; enums are
// their names. Errors: INVALID_ARGUMENT carries a google.rpc.Status with a google.rpc.BadRequest
// naming the field, in the `grpc-status-details-bin` trailer: see decodeStatusDetails().
//
// Library use:
//   const { connect } = require("./client");
//   const client = connect("127.0.0.1:50051");
//   const hint = await call(client, "GetRedemptionHint", { member_id: "1", item_id: "1000" });
//
// Command line (a smoke test: all seven RPCs and one bad request; prints JSON, exits 1 on any
// failure):
//   node client.js ADDRESS [--member ID] [--item ID] [--deadline-ms MS] [--tls]
//                  [--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--token TOKEN]
// --tls-ca trusts that CA (implies --tls); --tls-cert/--tls-key present a client certificate
// (mutual TLS); --token (default: $RECSVC_CLIENT_TOKEN) sends `authorization: Bearer TOKEN`.
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "protos");
const PROTO_FILE = "recsvc/v1/recsvc.proto";
const SERVICE = "recsvc.v1.RedemptionService";

const LOADER_OPTIONS = {
  keepCase: true, // the .proto's field names
  longs: String, // int64 as decimal strings
  enums: String, // enum values by name
  defaults: true, // every field present in answers, zero values included
  oneofs: false, // proto3 `optional` fields are simply absent when unset
  includeDirs: [PROTO_ROOT],
};

/** The RedemptionService client constructor, from the .proto at run time. */
function loadService() {
  const definition = protoLoader.loadSync(PROTO_FILE, LOADER_OPTIONS);
  const loaded = grpc.loadPackageDefinition(definition);
  return loaded.recsvc.v1.RedemptionService;
}

/** A client of the service at `address` (host:port): plaintext, or TLS trusting the system's
 * CAs (`tls`) or the CA in the file `ca`, with a client certificate (`cert`, `key`: files)
 * for a server that asks mutual TLS. */
function connect(address, { tls = false, ca = null, cert = null, key = null } = {}) {
  const Service = loadService();
  const read = (file) => (file ? fs.readFileSync(file) : null);
  const credentials = tls || ca || cert
    ? grpc.credentials.createSsl(read(ca), read(key), read(cert))
    : grpc.credentials.createInsecure();
  return new Service(address, credentials);
}

/** One unary call as a promise; the error is grpc-js's ServiceError (code, details, metadata).
 * `token`: sent as `authorization: Bearer <token>`. */
function call(client, method, request, { deadlineMs = 10000, token = null } = {}) {
  const deadline = new Date(Date.now() + deadlineMs);
  const metadata = new grpc.Metadata();
  if (token) metadata.set("authorization", `Bearer ${token}`);
  return new Promise((resolve, reject) => {
    client[method](request, metadata, { deadline },
      (err, response) => (err ? reject(err) : resolve(response)));
  });
}

// google.rpc.Status and google.rpc.BadRequest (googleapis' google/rpc/status.proto and
// error_details.proto), the fields used here with their published numbers: the repository
// does not carry those files, and the wire format needs only the numbers and types.
const RPC_TYPES = protobuf.parse(`
  syntax = "proto3";
  package google.rpc;
  message Any { string type_url = 1; bytes value = 2; }
  message Status { int32 code = 1; string message = 2; repeated Any details = 3; }
  message BadRequest {
    message FieldViolation { string field = 1; string description = 2; }
    repeated FieldViolation field_violations = 1;
  }
`, { keepCase: true }).root;
const BAD_REQUEST_URL = "type.googleapis.com/google.rpc.BadRequest";

/** The google.rpc.Status of an error, with the BadRequest details decoded; null if none. */
function decodeStatusDetails(err) {
  const raw = err && err.metadata ? err.metadata.get("grpc-status-details-bin") : [];
  if (!raw || raw.length === 0) return null;
  const Status = RPC_TYPES.lookupType("google.rpc.Status");
  const BadRequest = RPC_TYPES.lookupType("google.rpc.BadRequest");
  const status = Status.decode(raw[0]);
  return {
    code: status.code,
    message: status.message,
    details: status.details.map((any) => {
      const out = { type_url: any.type_url };
      if (any.type_url === BAD_REQUEST_URL) {
        out.field_violations = BadRequest.toObject(BadRequest.decode(any.value), {
          defaults: true,
        }).field_violations;
      }
      return out;
    }),
  };
}

function codeName(code) {
  return Object.keys(grpc.status).find((name) => grpc.status[name] === code) || String(code);
}

function parseArgs(argv) {
  const usage =
    "usage: node client.js ADDRESS [--member ID] [--item ID] [--deadline-ms MS] [--tls] " +
    "[--tls-ca FILE] [--tls-cert FILE --tls-key FILE] [--token TOKEN]";
  const args = { address: null, member: "1", item: "1", deadlineMs: 10000, tls: false,
    ca: null, cert: null, key: null, token: process.env.RECSVC_CLIENT_TOKEN || null };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    const value = () => {
      if (i + 1 >= argv.length) throw new Error(`${arg} needs a value\n${usage}`);
      return argv[++i];
    };
    if (arg === "--member") args.member = value();
    else if (arg === "--item") args.item = value();
    else if (arg === "--deadline-ms") args.deadlineMs = Number(value());
    else if (arg === "--tls") args.tls = true;
    else if (arg === "--tls-ca") args.ca = value();
    else if (arg === "--tls-cert") args.cert = value();
    else if (arg === "--tls-key") args.key = value();
    else if (arg === "--token") args.token = value();
    else if (arg === "-h" || arg === "--help") throw Object.assign(new Error(usage), { help: true });
    else if (arg.startsWith("-")) throw new Error(`unknown option ${arg}\n${usage}`);
    else if (args.address === null) args.address = arg;
    else throw new Error(`unexpected argument ${arg}\n${usage}`);
  }
  if (!args.address) throw new Error(usage);
  for (const [name, id] of [["--member", args.member], ["--item", args.item]]) {
    if (!/^-?\d+$/.test(id)) throw new Error(`${name}: an integer id, got ${JSON.stringify(id)}`);
  }
  if (!(args.deadlineMs > 0)) throw new Error("--deadline-ms: a positive number");
  if (!args.cert !== !args.key) throw new Error("--tls-cert and --tls-key: give both, or neither");
  return args;
}

function check(condition, what) {
  if (!condition) throw new Error(`check failed: ${what}`);
}

/** The smoke sequence: every RPC once, with its answer checked, then one bad request. */
async function smoke({ address, member, item, deadlineMs, tls, ca, cert, key, token }) {
  const client = connect(address, { tls, ca, cert, key });
  const opts = { deadlineMs, token };
  const report = { address, member_id: member, item_id: item, calls: {}, ok: false };
  const steps = [
    ["GetRedemptionHint",
      { member_id: member, item_id: item, context: { points_balance: "640" } },
      (r) => check(r.hint && r.hint.item_id === item, "the hint echoes the item id")],
    ["BatchGetRedemptionHints",
      { member_id: member, item_ids: [item, item] },
      (r) => check(r.hints.length === 2 && r.hints.every((h) => h.item_id === item),
        "one hint per requested item, in order")],
    ["RecommendRedemptions",
      { member_id: member, limit: 3 },
      (r) => check(r.options.length <= 3 && r.options.every((o, i) => o.rank === i + 1),
        "at most 3 options ranked 1..n")],
    ["OptimizeCartSplit",
      { member_id: member,
        lines: [
          { item_id: item, unit_price_minor: "25000", quantity: "2", points_eligible: true },
          { item_id: item, unit_price_minor: "990", quantity: "1", points_eligible: false },
        ],
        context: { points_balance: "1234" } },
      (r) => {
        check(r.order_total_minor === "50990", "order total 2 × 25000 + 990");
        check(BigInt(r.points_value_minor) + BigInt(r.cash_minor) === BigInt(r.order_total_minor),
          "points_value_minor + cash_minor = order_total_minor");
        check(r.lines.length === 2 && r.lines[1].points === "0", "no points on the cash-only line");
      }],
    ["GetChurnRisk",
      { member_id: member },
      (r) => check(r.risk && r.risk.member_id === member, "the risk echoes the member id")],
    ["BatchGetChurnRisk",
      { member_ids: [member, member] },
      (r) => check(r.risks.length === 2 && r.risks.every((k) => k.member_id === member),
        "one risk per requested member, in order")],
    ["GetNudges",
      { member_id: member, dry_run: true },  // a preview: nothing counts against the caps
      (r) => check(r.experiment_arm !== "" && Array.isArray(r.nudges),
        "the nudges due (possibly none), with the experiment arm named")],
  ];
  let failed = false;
  try {
    await new Promise((resolve, reject) => {
      client.waitForReady(new Date(Date.now() + deadlineMs), (err) => (err ? reject(err) : resolve()));
    });
    for (const [method, request, verify] of steps) {
      const started = process.hrtime.bigint();
      try {
        const response = await call(client, method, request, opts);
        verify(response);
        report.calls[method] = { ok: true, ms: msSince(started), response };
      } catch (err) {
        failed = true;
        report.calls[method] = { ok: false, ms: msSince(started), ...errorReport(err) };
      }
    }
    // a bad field: INVALID_ARGUMENT with a google.rpc.BadRequest naming it
    try {
      await call(client, "RecommendRedemptions", { member_id: member, limit: 999 }, opts);
      failed = true;
      report.bad_request = { ok: false, error: "limit 999 was accepted" };
    } catch (err) {
      const got = errorReport(err);
      const fields = ((got.status && got.status.details) || [])
        .flatMap((d) => (d.field_violations || []).map((v) => v.field));
      const ok = err.code === grpc.status.INVALID_ARGUMENT && fields.includes("limit");
      failed = failed || !ok;
      report.bad_request = { ok, ...got };
    }
  } catch (err) {
    failed = true;
    report.error = `${address}: not reachable: ${err.message}`;
  } finally {
    client.close();
  }
  report.ok = !failed;
  return report;
}

function errorReport(err) {
  if (err && typeof err.code === "number") {
    return { code: err.code, code_name: codeName(err.code), details: err.details,
      status: decodeStatusDetails(err) };
  }
  return { error: String((err && err.message) || err) };
}

function msSince(started) {
  return Number(process.hrtime.bigint() - started) / 1e6;
}

async function main(argv) {
  let args;
  try {
    args = parseArgs(argv);
  } catch (err) {
    (err.help ? console.log : console.error)(err.message);
    return err.help ? 0 : 2;
  }
  const report = await smoke(args);
  console.log(JSON.stringify(report, null, 2));
  if (!report.ok) {
    const failures = Object.entries(report.calls).filter(([, c]) => !c.ok).map(([m]) => m);
    if (report.bad_request && !report.bad_request.ok) failures.push("bad request check");
    if (report.error) failures.push(report.error);
    console.error(`recsvc smoke: failed: ${failures.join(", ")}`);
  }
  return report.ok ? 0 : 1;
}

module.exports = { loadService, connect, call, decodeStatusDetails, smoke, LOADER_OPTIONS };

if (require.main === module) {
  main(process.argv.slice(2)).then(
    (code) => { process.exitCode = code; },
    (err) => { console.error(err); process.exitCode = 1; },
  );
}
