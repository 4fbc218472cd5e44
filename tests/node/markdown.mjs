// Reading examples out of Markdown, for the tests that run them.

/** The code blocks fenced as exactly ```<info> (for example `js`, `js worker.js`). */
export function codeBlocks(markdown, info) {
  const pattern = new RegExp('```' + info.replaceAll('.', '\\.') + '\\n([\\s\\S]*?)```', 'g');
  return [...markdown.matchAll(pattern)].map((match) => match[1]);
}

/** The `// expected` comments after `console.log(...)` calls, in order. */
export function expectedOutput(block) {
  return block.split('\n')
    .filter((line) => /console\.log\(.*\); \/\/ /.test(line))
    .map((line) => line.slice(line.lastIndexOf('; // ') + 5));
}
