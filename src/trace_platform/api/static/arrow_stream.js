// Trace console: an Arrow IPC *stream* read as its bytes arrive (the SQL page's live answer).
// `new TraceArrow.StreamDecoder()`; `push(bytes)` returns the rows of every record batch now
// complete (arrays of values, one per column); `columns` ([{name, type}]) once the schema has
// arrived; `ended` once the end-of-stream marker has (a stream cut short never sets it).
// Values are what the page shows: numbers as numbers, integers beyond 2^53 and decimals that
// are not whole as exact text, timestamps, dates and times as ISO text, lists as arrays,
// structs and maps as objects, binary as hex. Uncompressed streams only (what the query
// service writes); an unknown type is an error naming its column.
"use strict";
(() => {
  const SAFE = BigInt(Number.MAX_SAFE_INTEGER);
  const utf8 = new TextDecoder();

  // -- flatbuffers: the little the Message, Schema and RecordBatch tables need ---------------
  class Table {
    constructor(dv, pos) { this.dv = dv; this.pos = pos; }
    static root(dv) { return new Table(dv, dv.getUint32(0, true)); }
    field(id) { // the field's absolute position, or 0 when absent
      const vt = this.pos - this.dv.getInt32(this.pos, true);
      const o = 4 + id * 2;
      if (o >= this.dv.getUint16(vt, true)) return 0;
      const at = this.dv.getUint16(vt + o, true);
      return at ? this.pos + at : 0;
    }
    int8(id, d = 0) { const p = this.field(id); return p ? this.dv.getInt8(p) : d; }
    uint8(id, d = 0) { const p = this.field(id); return p ? this.dv.getUint8(p) : d; }
    int16(id, d = 0) { const p = this.field(id); return p ? this.dv.getInt16(p, true) : d; }
    int32(id, d = 0) { const p = this.field(id); return p ? this.dv.getInt32(p, true) : d; }
    int64(id, d = 0) { const p = this.field(id); return p ? Number(this.dv.getBigInt64(p, true)) : d; }
    bool(id, d = false) { const p = this.field(id); return p ? this.dv.getUint8(p) !== 0 : d; }
    ref(p) { return p + this.dv.getUint32(p, true); }
    table(id) { const p = this.field(id); return p ? new Table(this.dv, this.ref(p)) : null; }
    string(id) {
      const p = this.field(id);
      if (!p) return null;
      const s = this.ref(p);
      return utf8.decode(new Uint8Array(this.dv.buffer, this.dv.byteOffset + s + 4, this.dv.getUint32(s, true)));
    }
    vector(id) { // [start, length] of a vector's elements
      const p = this.field(id);
      if (!p) return [0, 0];
      const v = this.ref(p);
      return [v + 4, this.dv.getUint32(v, true)];
    }
    tables(id) {
      const [start, n] = this.vector(id);
      const out = [];
      for (let i = 0; i < n; i++) out.push(new Table(this.dv, this.ref(start + i * 4)));
      return out;
    }
    structs(id, size) { // a vector of structs of `size` bytes, each as its int64 words
      const [start, n] = this.vector(id);
      const out = [];
      for (let i = 0; i < n; i++) {
        const words = [];
        for (let w = 0; w < size; w += 8) words.push(Number(this.dv.getBigInt64(start + i * size + w, true)));
        out.push(words);
      }
      return out;
    }
  }

  // Type union ids and enums of Schema.fbs
  const T = { Null: 1, Int: 2, Float: 3, Binary: 4, Utf8: 5, Bool: 6, Decimal: 7, Date: 8, Time: 9, Timestamp: 10, Interval: 11, List: 12, Struct: 13, FixedSizeBinary: 15, FixedSizeList: 16, Map: 17, Duration: 18, LargeBinary: 19, LargeUtf8: 20, LargeList: 21 };
  const UNIT_DIGITS = [0, 3, 6, 9]; // SECOND, MILLISECOND, MICROSECOND, NANOSECOND

  function fieldOf(t) {
    const kind = t.uint8(2);
    const ty = t.table(3);
    const f = { name: t.string(0) || "", kind, children: t.tables(5).map(fieldOf), dictionary: null };
    if (kind === T.Int) { f.bits = ty.int32(0); f.signed = ty.bool(1); }
    else if (kind === T.Float) f.bits = [16, 32, 64][ty.int16(0)];
    else if (kind === T.Decimal) { f.precision = ty.int32(0); f.scale = ty.int32(1); f.bits = ty.int32(2, 128); }
    else if (kind === T.Date) f.unit = ty.int16(0, 1);
    else if (kind === T.Time) { f.unit = ty.int16(0, 1); f.bits = ty.int32(1, 32); }
    else if (kind === T.Timestamp) { f.unit = ty.int16(0); f.tz = ty.string(1); }
    else if (kind === T.Duration) f.unit = ty.int16(0, 1);
    else if (kind === T.Interval) f.unit = ty.int16(0);
    else if (kind === T.FixedSizeBinary) f.width = ty.int32(0);
    else if (kind === T.FixedSizeList) f.size = ty.int32(0);
    const dict = t.table(4);
    if (dict) {
      const index = dict.table(1);
      f.dictionary = { id: dict.int64(0), bits: index ? index.int32(0) : 32, signed: index ? index.bool(1) : true };
    }
    f.type = typeName(f);
    return f;
  }

  function typeName(f) {
    switch (f.kind) {
      case T.Null: return "NULL";
      case T.Int: return (f.signed ? "" : "U") + { 8: "TINYINT", 16: "SMALLINT", 32: "INTEGER", 64: "BIGINT" }[f.bits];
      case T.Float: return f.bits === 64 ? "DOUBLE" : "FLOAT";
      case T.Utf8: case T.LargeUtf8: return "VARCHAR";
      case T.Binary: case T.LargeBinary: case T.FixedSizeBinary: return "BLOB";
      case T.Bool: return "BOOLEAN";
      case T.Decimal: // the query service writes HUGEINT as decimal256(39, 0), to stay exact
        return f.bits === 256 && f.precision === 39 && f.scale === 0 ? "HUGEINT" : `DECIMAL(${f.precision}, ${f.scale})`;
      case T.Date: return "DATE";
      case T.Time: return "TIME";
      case T.Timestamp: return f.tz ? "TIMESTAMP WITH TIME ZONE" : "TIMESTAMP";
      case T.Interval: case T.Duration: return "INTERVAL";
      case T.List: case T.LargeList: case T.FixedSizeList: return `${f.children[0].type}[]`;
      case T.Struct: return `STRUCT(${f.children.map((c) => `${c.name} ${c.type}`).join(", ")})`;
      case T.Map: { const kv = f.children[0].children; return `MAP(${kv[0].type}, ${kv[1].type})`; }
      default: return `arrow type ${f.kind}`;
    }
  }

  // -- values --------------------------------------------------------------------------------
  const int = (b) => (b >= -SAFE && b <= SAFE ? Number(b) : b.toString()); // exact, as text when wide
  const pad = (n, w) => String(n).padStart(w, "0");

  function decimal(b, scale) {
    if (scale <= 0) return int(b * 10n ** BigInt(-scale));
    const unit = 10n ** BigInt(scale);
    if (b % unit === 0n) return int(b / unit); // whole: a number while it fits (as in JSON)
    const digits = (b < 0n ? -b : b).toString().padStart(scale + 1, "0");
    return `${b < 0n ? "-" : ""}${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  }

  function split(b, digits) { // [whole seconds, the rest in units of 10^-digits], rest >= 0
    const unit = 10n ** BigInt(digits);
    let s = b / unit, rest = b % unit;
    if (rest < 0n) { s -= 1n; rest += unit; }
    return [s, rest];
  }

  function timestamp(b, unit, tz) {
    const digits = UNIT_DIGITS[unit];
    const [s, rest] = split(b, digits);
    const d = new Date(Number(s) * 1000);
    if (Number.isNaN(d.getTime())) return b.toString(); // beyond what a Date holds (infinity)
    const frac = rest ? "." + pad(rest, digits).padEnd(6, "0") : "";
    return d.toISOString().slice(0, 19) + frac + (tz ? "+00:00" : "");
  }

  function timeOfDay(b, unit) {
    const digits = UNIT_DIGITS[unit];
    const [s, rest] = split(b, digits);
    const n = Number(s);
    const text = `${pad(Math.floor(n / 3600), 2)}:${pad(Math.floor(n / 60) % 60, 2)}:${pad(n % 60, 2)}`;
    return rest ? `${text}.${pad(rest, digits).padEnd(6, "0")}` : text;
  }

  function interval(months, days, nanos) {
    const parts = [];
    if (months) parts.push(`${months} month${Math.abs(months) === 1 ? "" : "s"}`);
    if (days) parts.push(`${days} day${Math.abs(days) === 1 ? "" : "s"}`);
    if (nanos || !parts.length) parts.push((nanos < 0n ? "-" : "") + timeOfDay(nanos < 0n ? -nanos : nanos, 3));
    return parts.join(" ");
  }

  const hex = (bytes) => Array.from(bytes, (x) => pad(x.toString(16), 2)).join("");
  const dayText = (ms) => { const d = new Date(ms); return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString().slice(0, 10); };

  // -- columns of a record batch -------------------------------------------------------------
  // A column is a function row -> value, reading the batch's (copied, so aligned) body.
  function column(f, batch, dictionaries) {
    const nulls = batch.nodes[batch.node++][1];
    const buffer = () => batch.buffers[batch.buf++];
    if (f.kind === T.Null) return () => null;
    const [vOff, vLen] = buffer();
    const bits = nulls && vLen ? new Uint8Array(batch.body, vOff, vLen) : null;
    const valid = bits ? (i) => (bits[i >> 3] >> (i & 7)) & 1 : () => 1;
    const view = (Kind, size) => { const [o, n] = buffer(); return new Kind(batch.body, o, Math.floor(n / size)); };
    let get;
    if (f.dictionary) {
      const lookup = dictionaries.get(f.dictionary.id);
      if (!lookup) throw new Error(`column ${f.name}: its dictionary did not arrive`);
      const d = f.dictionary;
      const Kind = { 8: d.signed ? Int8Array : Uint8Array, 16: d.signed ? Int16Array : Uint16Array, 32: d.signed ? Int32Array : Uint32Array, 64: d.signed ? BigInt64Array : BigUint64Array }[d.bits];
      const idx = view(Kind, d.bits / 8);
      get = (i) => lookup(Number(idx[i]));
    } else {
      get = values(f, batch, dictionaries, view);
    }
    return (i) => (valid(i) ? get(i) : null);
  }

  function values(f, batch, dictionaries, view) {
    switch (f.kind) {
      case T.Int: {
        const Kind = { 8: f.signed ? Int8Array : Uint8Array, 16: f.signed ? Int16Array : Uint16Array, 32: f.signed ? Int32Array : Uint32Array, 64: f.signed ? BigInt64Array : BigUint64Array }[f.bits];
        const a = view(Kind, f.bits / 8);
        return f.bits === 64 ? (i) => int(a[i]) : (i) => a[i];
      }
      case T.Float: {
        if (f.bits === 16) { const a = view(Uint16Array, 2); return (i) => half(a[i]); }
        const a = view(f.bits === 64 ? Float64Array : Float32Array, f.bits / 8);
        return (i) => a[i];
      }
      case T.Bool: { const a = view(Uint8Array, 1); return (i) => ((a[i >> 3] >> (i & 7)) & 1) === 1; }
      case T.Utf8: case T.Binary: case T.LargeUtf8: case T.LargeBinary: {
        const large = f.kind === T.LargeUtf8 || f.kind === T.LargeBinary;
        const offs = view(large ? BigInt64Array : Int32Array, large ? 8 : 4);
        const [dOff] = batch.buffers[batch.buf++];
        const text = f.kind === T.Utf8 || f.kind === T.LargeUtf8;
        return (i) => {
          const piece = new Uint8Array(batch.body, dOff + Number(offs[i]), Number(offs[i + 1]) - Number(offs[i]));
          return text ? utf8.decode(piece) : hex(piece);
        };
      }
      case T.FixedSizeBinary: { const [o] = batch.buffers[batch.buf++]; return (i) => hex(new Uint8Array(batch.body, o + i * f.width, f.width)); }
      case T.Decimal: {
        const words = f.bits / 64;
        const a = view(BigUint64Array, 8);
        const top = 1n << BigInt(f.bits);
        return (i) => {
          let b = 0n;
          for (let w = words - 1; w >= 0; w--) b = (b << 64n) | a[i * words + w];
          if (b >= top >> 1n) b -= top;
          return decimal(b, f.scale);
        };
      }
      case T.Date: {
        if (f.unit === 0) { const a = view(Int32Array, 4); return (i) => dayText(a[i] * 86400000); }
        const a = view(BigInt64Array, 8);
        return (i) => dayText(Number(a[i]));
      }
      case T.Time: {
        const a = f.bits === 64 ? view(BigInt64Array, 8) : view(Int32Array, 4);
        return (i) => timeOfDay(BigInt(a[i]), f.unit);
      }
      case T.Timestamp: { const a = view(BigInt64Array, 8); return (i) => timestamp(a[i], f.unit, f.tz); }
      case T.Duration: { const a = view(BigInt64Array, 8); return (i) => interval(0, 0, a[i] * 10n ** BigInt(9 - UNIT_DIGITS[f.unit])); }
      case T.Interval: {
        if (f.unit === 0) { const a = view(Int32Array, 4); return (i) => interval(a[i], 0, 0n); }
        if (f.unit === 1) { const a = view(Int32Array, 4); return (i) => interval(0, a[2 * i], BigInt(a[2 * i + 1]) * 1000000n); }
        const [o] = batch.buffers[batch.buf++];
        const dv = new DataView(batch.body, o);
        return (i) => interval(dv.getInt32(i * 16, true), dv.getInt32(i * 16 + 4, true), dv.getBigInt64(i * 16 + 8, true));
      }
      case T.List: case T.LargeList: case T.Map: {
        const large = f.kind === T.LargeList;
        const offs = view(large ? BigInt64Array : Int32Array, large ? 8 : 4);
        const child = column(f.children[0], batch, dictionaries);
        const items = (i) => { const out = []; for (let j = Number(offs[i]); j < Number(offs[i + 1]); j++) out.push(child(j)); return out; };
        if (f.kind !== T.Map) return items;
        return (i) => { // entries {key, value}: an object while every key is a string or number
          const entries = items(i).map((e) => [e[f.children[0].children[0].name], e[f.children[0].children[1].name]]);
          return entries.every(([k]) => typeof k === "string" || typeof k === "number") ? Object.fromEntries(entries) : entries;
        };
      }
      case T.FixedSizeList: {
        const child = column(f.children[0], batch, dictionaries);
        return (i) => { const out = []; for (let j = i * f.size; j < (i + 1) * f.size; j++) out.push(child(j)); return out; };
      }
      case T.Struct: {
        const kids = f.children.map((c) => [c.name, column(c, batch, dictionaries)]);
        return (i) => Object.fromEntries(kids.map(([name, get]) => [name, get(i)]));
      }
      default:
        throw new Error(`column ${f.name}: its type (${f.type}) cannot be shown here; download it as CSV or Parquet`);
    }
  }

  function half(h) {
    const e = (h >> 10) & 31, m = h & 1023, s = h >> 15 ? -1 : 1;
    if (e === 0) return s * 2 ** -14 * (m / 1024);
    if (e === 31) return m ? NaN : s * Infinity;
    return s * 2 ** (e - 15) * (1 + m / 1024);
  }

  // -- the stream ----------------------------------------------------------------------------
  class StreamDecoder {
    constructor() {
      this.buf = new Uint8Array(1 << 16);
      this.start = 0;
      this.end = 0;
      this.fields = null;
      this.columns = null;
      this.dictionaries = new Map(); // id -> (index -> value)
      this.dictionaryValues = new Map(); // id -> values, for a delta to extend
      this.ended = false;
    }

    push(chunk) {
      this.keep(chunk);
      const rows = [];
      while (!this.ended) {
        const have = this.end - this.start;
        if (have < 4) break;
        const dv = new DataView(this.buf.buffer, this.start, have);
        let at = 0, size = dv.getInt32(0, true);
        if (size === -1) { // continuation marker, then the metadata's size
          if (have < 8) break;
          size = dv.getInt32(4, true);
          at = 8;
        } else {
          at = 4;
        }
        if (size === 0) { this.ended = true; this.start += at; break; }
        if (have < at + size) break;
        const message = Table.root(new DataView(this.buf.buffer, this.start + at, size));
        const bodySize = message.int64(3);
        if (have < at + size + bodySize) break;
        const from = this.start + at + size;
        const body = this.buf.slice(from, from + bodySize).buffer; // a copy: aligned, and kept
        this.start = from + bodySize;
        this.read(message, body, rows);
      }
      return rows;
    }

    keep(chunk) { // append, compacting or growing the buffer as needed
      if (this.end + chunk.length > this.buf.length) {
        const live = this.end - this.start;
        const target = live + chunk.length > this.buf.length ? new Uint8Array(Math.max(this.buf.length * 2, live + chunk.length)) : this.buf;
        target.set(this.buf.subarray(this.start, this.end), 0);
        this.buf = target;
        this.start = 0;
        this.end = live;
      }
      this.buf.set(chunk, this.end);
      this.end += chunk.length;
    }

    read(message, body, rows) {
      const kind = message.uint8(1);
      const header = message.table(2);
      if (kind === 1) { // Schema
        this.fields = header.tables(1).map(fieldOf);
        this.columns = this.fields.map((f) => ({ name: f.name, type: f.type }));
      } else if (kind === 2) { // DictionaryBatch: the values a dictionary-encoded column names
        const field = this.dictionaryField(header.int64(0));
        const data = header.table(1);
        const batch = this.batch(data, body);
        const plain = { ...field, dictionary: null };
        const get = column(plain, batch, this.dictionaries);
        const got = Array.from({ length: batch.length }, (_, i) => get(i));
        const prior = header.bool(2) ? this.dictionaryValues.get(field.dictionary.id) || [] : [];
        const all = prior.concat(got);
        this.dictionaryValues.set(field.dictionary.id, all);
        this.dictionaries.set(field.dictionary.id, (i) => all[i]);
      } else if (kind === 3) { // RecordBatch
        if (!this.fields) throw new Error("a record batch arrived before the schema");
        const batch = this.batch(header, body);
        const cols = this.fields.map((f) => column(f, batch, this.dictionaries));
        for (let i = 0; i < batch.length; i++) rows.push(cols.map((get) => get(i)));
      }
    }

    batch(header, body) {
      if (header.table(3)) throw new Error("a compressed Arrow stream cannot be shown here");
      return { length: header.int64(0), nodes: header.structs(1, 16), buffers: header.structs(2, 16), node: 0, buf: 0, body };
    }

    dictionaryField(id) {
      const find = (fs) => { for (const f of fs) { if (f.dictionary && f.dictionary.id === id) return f; const c = find(f.children); if (c) return c; } return null; };
      const f = this.fields && find(this.fields);
      if (!f) throw new Error("a dictionary arrived for no column");
      return f;
    }
  }

  window.TraceArrow = { StreamDecoder };
})();
