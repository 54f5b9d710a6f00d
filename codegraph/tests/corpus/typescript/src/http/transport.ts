import { log } from "../util/log";

export interface Transport {
  send(url: string): string;
}

export class FetchTransport implements Transport {
  send(url: string): string {
    log(url);
    return url;
  }
}

export class MockTransport implements Transport {
  send(url: string): string {
    return "";
  }
}
