// The little of Deno's global API the example uses, so `tsc` can check it
// without Deno installed (in Deno itself these come built in).
declare namespace Deno {
  function serve(handler: (req: Request) => Response | Promise<Response>): unknown;
  const env: { get(name: string): string | undefined };
}
