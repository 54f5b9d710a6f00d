import { Client, DefaultTransport, log as writeLog } from "./index";
import * as t from "./http/transport";

function start(): void {
  const client = new Client(new DefaultTransport());
  client.get("x");
  writeLog("y");
  const m = new t.MockTransport();
  m.send("z");
}

export default start;
