export function log(message: string): void {
  console.log(format(message));
}

export function format(message: string): string {
  return `[app] ${message}`;
}
