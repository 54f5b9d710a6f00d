import { Transport } from "./transport";

export class Client {
  constructor(private transport: Transport) {}

  get(url: string): string {
    return this.transport.send(this.normalize(url));
  }

  normalize(url: string): string {
    return url.trim();
  }
}
