export { Client } from "./http/client";
export * from "./util/log";
export { FetchTransport as DefaultTransport } from "./http/transport";
