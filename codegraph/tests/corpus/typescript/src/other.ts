function log(): void {}

export function run(): void {
  log();
}
