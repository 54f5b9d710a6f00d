import start from "../src/app";
import { run } from "../src/other";

test("starts", () => {
  start();
  run();
});
