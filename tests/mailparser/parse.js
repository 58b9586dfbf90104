// Reads each .eml named on the command line with mailparser (an independent parser: Node's
// libmime, not Python's email package) and prints one JSON list of what it found.
const fs = require("fs");
const { simpleParser } = require("mailparser");

async function main() {
  const found = [];
  for (const file of process.argv.slice(2)) {
    const mail = await simpleParser(fs.readFileSync(file));
    const list = mail.headers.get("list");
    found.push({
      file,
      subject: mail.subject,
      from: mail.from ? mail.from.value : [],
      to: mail.to ? mail.to.value : [],
      unsubscribe: list && list.unsubscribe ? list.unsubscribe.url : null,
      text: mail.text || "",
      html: mail.html || "",
    });
  }
  process.stdout.write(JSON.stringify(found));
}

main().catch((error) => {
  process.stderr.write(String(error) + "\n");
  process.exit(1);
});
